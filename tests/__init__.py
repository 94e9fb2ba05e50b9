"""stripe's tests, one package per kind:

* ``tests.core``: the pure core on a fake clock (``netsim``), known answers,
  property and fuzz tests; no sockets, no root;
* ``tests.shell``: the shell's code (config, CLI, ``stripe/io``) without
  network namespaces; no root;
* ``tests.integration``: real stripe processes in network namespaces (root);
* ``tests.bench``: the benchmark's own tests (those that build a lab: root);
* ``tests.containers``: the container files, and the container smoke test.
* ``tests.docs``: the README's and docs' links and section anchors.

Tests that need root carry the ``integration`` marker, so
``pytest -m "not integration"`` runs the rest as a normal user.
"""
