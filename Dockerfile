# stripe in a container.
#
#   docker build -t stripe .
#   docker run --rm --cap-add NET_ADMIN --device /dev/net/tun \
#       -v $PWD/client.toml:/etc/stripe/stripe.toml:ro stripe            # client
#   docker run ... stripe server -c /etc/stripe/stripe.toml              # server
#
# The config is mounted at /etc/stripe/stripe.toml (CMD runs a client with it).
# The image also carries ip/tc (iproute2), iperf3, ping, `stripe-shape` (tbf
# on every link interface) and `stripe-scenario` (iperf3 over each link and
# through the tunnel) for the test scenarios; see docs/containers.md.
#
# FROM is the official image a registry serves.  Where no registry is
# reachable, containers/base-image.sh makes a Debian bookworm rootfs with
# debootstrap and tags it with this same name, so this file builds unchanged.
# All of stripe's dependencies ship manylinux wheels: no compiler is needed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, from pyproject.toml alone, so that a change to the
# source does not download them again.
COPY pyproject.toml /src/
RUN python3 -m venv /opt/stripe \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" >/tmp/requirements.txt \
 && /opt/stripe/bin/pip install -r /tmp/requirements.txt "setuptools>=61" wheel
COPY . /src
RUN /opt/stripe/bin/pip install --no-deps --no-build-isolation /src \
 && /opt/stripe/bin/pip uninstall -y -q pip setuptools wheel \
 && /opt/stripe/bin/stripe --help >/dev/null

FROM ${PYTHON_IMAGE}
# Tools for the scenarios: the debootstrap base has them already, the
# official slim image gets them from Debian.
RUN if ! command -v tc >/dev/null || ! command -v iperf3 >/dev/null || ! command -v ping >/dev/null; then \
        apt-get update \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2 iperf3 iputils-ping \
     && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /opt/stripe /opt/stripe
COPY containers/stripe-shape.sh /usr/local/bin/stripe-shape
COPY containers/scenario.py /usr/local/bin/stripe-scenario
ENV PATH=/opt/stripe/bin:$PATH PYTHONUNBUFFERED=1
RUN chmod 755 /usr/local/bin/stripe-shape /usr/local/bin/stripe-scenario \
 && mkdir -p /etc/stripe
ENTRYPOINT ["stripe"]
CMD ["client", "-c", "/etc/stripe/stripe.toml"]
