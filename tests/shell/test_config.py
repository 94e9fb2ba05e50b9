"""Config validation: every mistake is one line naming file, key and fix."""

from __future__ import annotations

import base64
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from stripe import config
from stripe.noise import decode_key, encode_key, generate_keypair
from stripe.spec import Role

PRIV = encode_key(generate_keypair()[0])
PUB = encode_key(generate_keypair()[1])

CLIENT = f"""
[interface]
name = "st0"
address = ["10.2.0.1/24", "fd00::1/64"]
private_key = "{PRIV}"
scheduler = "roundrobin"
[peer]
public_key = "{PUB}"
[[link]]
name = "dsl"
interface = "eth0"
remote = "10.0.0.2:5000"
weight = 2
[[link]]
name = "lte"
source = "10.1.0.1"
remote = "[fd00::2]:5000"
backup = true
"""


def load(tmp_path: Path, text: str, role: Role = Role.CLIENT) -> config.Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    path.chmod(0o600)  # it holds a private key
    return config.load(path, role, interface_exists=lambda name: name == "eth0")


def test_valid_client(tmp_path: Path) -> None:
    cfg = load(tmp_path, CLIENT)
    assert cfg.mtu is None  # "auto": derived from the links at start
    assert cfg.pmtu_probe is config.DEFAULT_PMTU_PROBE
    assert cfg.loss_repair and cfg.endpoint_spec(1400).loss_repair
    assert [link.name for link in cfg.links] == ["dsl", "lte"]
    assert cfg.links[0].remote == ("10.0.0.2", 5000)
    assert cfg.links[1].remote == ("fd00::2", 5000)
    assert cfg.links[1].backup and cfg.links[0].weight == 2
    spec = cfg.endpoint_spec()
    assert spec.scheduler == "roundrobin" and len(spec.links) == 2


def test_valid_server_without_links(tmp_path: Path) -> None:
    text = f"""
[interface]
address = ["10.2.0.2/24"]
private_key = "{PRIV}"
listen_port = 5000
[peer]
public_key = "{PUB}"
"""
    cfg = load(tmp_path, text, Role.SERVER)
    assert cfg.listen_port == 5000 and cfg.links == ()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("weight = 2", "weight = 2\ncolour = 1"), "link[0].colour: unknown key"),
        (('scheduler = "roundrobin"', "scheduler = 3"), "interface.scheduler: expected str"),
        (('scheduler = "roundrobin"', 'scheduler = "fastest"'),
         "interface.scheduler: expected one of"),
        (('remote = "10.0.0.2:5000"', 'remote = "10.0.0.2"'),
         'link[0].remote: expected "HOST:PORT"'),
        (('address = ["10.2.0.1/24", "fd00::1/64"]', 'address = ["10.2.0.300/24"]'),
         "interface.address: expected addresses like"),
        ((f'private_key = "{PRIV}"', 'private_key = "abc"'),
         "interface.private_key: expected a base64"),
        ((f'private_key = "{PRIV}"', ""), "interface.private_key: missing"),
        (('interface = "eth0"', 'interface = "veth9"'),
         "link[0].interface: interface 'veth9' does not exist"),
        (('name = "dsl"', 'name = "lte"'), "link: link names must be unique"),
        (("weight = 2", "weight = 0"), "link[0].weight: expected 1..1000"),
        (('source = "10.1.0.1"', 'source = "me"'), "link[1].source: expected an IP address"),
        (("backup = true", 'backup = "yes"'), "link[1].backup: expected bool"),
        (('[peer]', '[peers]'), "peer: missing; expected a [peer] table"),
        (('scheduler = "roundrobin"', 'mtu = "big"'),
         'interface.mtu: expected "auto" or an MTU 1280..9000, got \'big\''),
        (('scheduler = "roundrobin"', "mtu = 1000"),
         "interface.mtu: expected \"auto\" or an MTU 1280..9000 (IPv6 in the tunnel needs "
         "1280), got 1000"),
        (('scheduler = "roundrobin"', "mtu = 9001"), "interface.mtu: expected"),
        (('scheduler = "roundrobin"', "mtu = true"), "interface.mtu: expected"),
        (('scheduler = "roundrobin"', 'pmtu_probe = "yes"'),
         "interface.pmtu_probe: expected bool"),
        (('scheduler = "roundrobin"', 'loss_repair = "no"'),
         "interface.loss_repair: expected bool"),
        (('scheduler = "roundrobin"', "duplicate_below = -1"),
         "interface.duplicate_below: expected 0 (off) .. 9000 bytes, got -1"),
        (('scheduler = "roundrobin"', 'duplicate_below = "small"'),
         "interface.duplicate_below: expected a packet size in bytes"),
        (('scheduler = "roundrobin"', "queue_target_ms = -1"),
         "interface.queue_target_ms: expected 0 (off) .. 1000 ms, got -1"),
        (('scheduler = "roundrobin"', 'queue_target_ms = "low"'),
         "interface.queue_target_ms: expected a queueing delay in ms, or 0 (off)"),
        (('scheduler = "roundrobin"', "duplicate_dscp = [46, 64]"),
         "interface.duplicate_dscp: expected DSCP values 0..63 such as [46] (EF), got [46, 64]"),
        (('scheduler = "roundrobin"', "duplicate_dscp = 46"),
         "interface.duplicate_dscp: expected a list of DSCP values like [46], got an integer"),
    ],
)
def test_errors_name_file_key_and_fix(tmp_path: Path, change: tuple[str, str],
                                      expected: str) -> None:
    old, new = change
    assert old in CLIENT
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, CLIENT.replace(old, new, 1))
    message = str(err.value)
    assert message.startswith(str(tmp_path / "c.toml") + ": ")
    assert expected in message
    assert "\n" not in message


def test_mtu_auto_or_a_number(tmp_path: Path) -> None:
    assert load(tmp_path, CLIENT.replace('scheduler = "roundrobin"', 'mtu = "auto"')).mtu is None
    fixed = load(tmp_path, CLIENT.replace('scheduler = "roundrobin"',
                                          "mtu = 1380\npmtu_probe = false"))
    assert fixed.mtu == 1380 and not fixed.pmtu_probe
    spec = fixed.endpoint_spec()
    assert spec.tunnel_mtu == 1380 and not spec.pmtu_probe
    # "auto": the driver passes the MTU it derived.
    assert load(tmp_path, CLIENT).endpoint_spec(1430).tunnel_mtu == 1430
    v4_only = CLIENT.replace(', "fd00::1/64"', "").replace('scheduler = "roundrobin"',
                                                            "mtu = 576")
    assert load(tmp_path, v4_only).mtu == 576


def test_key_file_unreadable_and_too_open(tmp_path: Path) -> None:
    text = CLIENT.replace(f'private_key = "{PRIV}"', 'private_key_file = "client.key"')
    with pytest.raises(config.ConfigError, match="private_key_file: cannot read"):
        load(tmp_path, text)
    key = tmp_path / "client.key"
    key.write_text(PRIV + "\n")
    key.chmod(0o644)
    with pytest.raises(config.ConfigError, match="chmod 600"):
        load(tmp_path, text)
    key.chmod(0o600)
    assert load(tmp_path, text).private_key == decode_key(PRIV)


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        load(tmp_path, "[interface\n")


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stripe", *args], input=stdin,
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def test_cli_check_exit_2_one_line_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(CLIENT.replace('remote = "10.0.0.2:5000"', 'remote = 5000'))
    bad.chmod(0o600)
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "link[0].remote: expected" in result.stderr


def test_cli_genkey_pubkey_roundtrip() -> None:
    private = run_cli("genkey").stdout.strip()
    public = run_cli("pubkey", stdin=private).stdout.strip()
    assert len(decode_key(private)) == 32 and len(decode_key(public)) == 32
    assert run_cli("pubkey", stdin="nonsense").returncode == 2


def test_server_with_several_peers_needs_allowed_ips(tmp_path: Path) -> None:
    other = encode_key(generate_keypair()[1])
    base = f"""
[interface]
address = ["10.2.0.1/24"]
private_key = "{PRIV}"
listen_port = 5000
[[peer]]
public_key = "{PUB}"
allowed_ips = ["10.2.0.11/32", "fd00::11/128"]
[[peer]]
public_key = "{other}"
"""
    with pytest.raises(config.ConfigError, match=r"peer\[1\]\.allowed_ips: missing"):
        load(tmp_path, base, Role.SERVER)
    cfg = load(tmp_path, base + 'allowed_ips = ["10.2.0.12/32"]\n', Role.SERVER)
    assert [len(p.allowed_ips) for p in cfg.peers] == [2, 1]
    with pytest.raises(config.ConfigError, match=r"peer\[1\]\.allowed_ips: expected"):
        load(tmp_path, base + 'allowed_ips = ["10.2.0.300/32"]\n', Role.SERVER)
    with pytest.raises(config.ConfigError, match="same public_key"):
        load(tmp_path, base.replace(other, PUB) + 'allowed_ips = ["10.2.0.12/32"]\n',
             Role.SERVER)
    # A client has exactly one peer: its server.
    with pytest.raises(config.ConfigError, match="expected one"):
        load(tmp_path, CLIENT.replace("[peer]", "[[peer]]"))


def test_every_config_field_is_either_live_or_needs_a_restart() -> None:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config.Config)}
    assert fields == set(config.RESTART_KEYS) | config.LIVE_FIELDS
    assert not set(config.RESTART_KEYS) & config.LIVE_FIELDS


def test_restart_needed_names_the_key(tmp_path: Path) -> None:
    old = load(tmp_path, CLIENT)
    assert config.restart_needed(old, load(tmp_path, CLIENT.replace("weight = 2", "weight = 3")
                                           .replace('name = "lte"', 'name = "5g"'))) is None
    new = load(tmp_path, CLIENT.replace('name = "st0"', 'name = "st0"\nmtu = 1300'))
    assert config.restart_needed(old, new) == (
        f"{tmp_path / 'c.toml'}: interface.mtu changed (auto -> 1300): needs a restart")
    new = load(tmp_path, CLIENT.replace('"10.2.0.1/24", ', ""))
    assert "interface.address changed ([10.2.0.1/24, fd00::1/64] -> [fd00::1/64])" in str(
        config.restart_needed(old, new))
    new = load(tmp_path, CLIENT.replace(PRIV, encode_key(generate_keypair()[0])))
    message = str(config.restart_needed(old, new))
    assert message.endswith("interface.private_key changed: needs a restart")
    assert PRIV not in message


def test_link_binding_describes_the_socket(tmp_path: Path) -> None:
    dsl, lte = load(tmp_path, CLIENT).links
    assert dsl.binding == "dev eth0"
    assert lte.binding == "from 10.1.0.1:0"
    assert load(tmp_path, CLIENT).endpoint_spec().links[0].binding == "dev eth0"


def test_files_root_read_can_be_shipped_to_the_running_process(tmp_path: Path) -> None:
    """`stripe reload` reads the config as root and sends it over the control
    socket to a process that may no longer be allowed to read it."""
    import json

    text = CLIENT.replace(f'private_key = "{PRIV}"', 'private_key_file = "client.key"')
    key = tmp_path / "client.key"
    key.write_text(PRIV + "\n")
    key.chmod(0o600)
    files: dict[str, object] = {}
    path = tmp_path / "c.toml"
    path.write_text(text)
    def exists(name: str) -> bool:
        return name == "eth0"

    read = config.load(path, Role.CLIENT, exists, config.recording_reader(files))
    assert sorted(files) == [str(path), str(key)]
    path.unlink()
    key.unlink()
    shipped = config.shipped_reader(json.loads(json.dumps(files)))
    assert config.load(path, Role.CLIENT, exists, shipped) == read
    for bad in ({}, {str(path): {"mode": "x", "data": ""}}, {str(path): {"mode": 1, "data": "!"}},
                "not a dict"):
        with pytest.raises(config.ConfigError, match=r"c\.toml: cannot read"):
            config.load(path, Role.CLIENT, exists, config.shipped_reader(bad))
    files[str(key)] = {"mode": 0o600, "uid": 0, "data": "/w=="}  # not UTF-8, not a key
    with pytest.raises(config.ConfigError, match="private_key_file: expected a base64"):
        config.load(path, Role.CLIENT, exists, config.shipped_reader(files))


def test_with_routing_automation_link_changes_need_a_restart(tmp_path: Path) -> None:
    routed = CLIENT.replace('name = "st0"', 'name = "st0"\nroute_all = true')
    old = load(tmp_path, routed)
    assert config.restart_needed(old, load(tmp_path, routed.replace("weight = 2", "weight = 5"))
                                 ) is None
    dropped = routed[:routed.rindex("[[link]]")]
    message = str(config.restart_needed(old, load(tmp_path, dropped)))
    assert "link: with route_all or link_routes" in message and "needs a restart" in message
    assert config.restart_needed(load(tmp_path, CLIENT), load(tmp_path, CLIENT[
        :CLIENT.rindex("[[link]]")])) is None  # without it, links come and go live


def test_queue_target_key(tmp_path: Path) -> None:
    assert load(tmp_path, CLIENT).endpoint_spec().queue_target_s == 0.005  # on by default
    tuned = load(tmp_path, CLIENT.replace('scheduler = "roundrobin"', "queue_target_ms = 12.5"))
    assert tuned.endpoint_spec().queue_target_s == 0.0125
    off = load(tmp_path, CLIENT.replace('scheduler = "roundrobin"', "queue_target_ms = 0"))
    assert off.queue_target_ms is None and off.endpoint_spec().queue_target_s is None


def test_redundancy_keys(tmp_path: Path) -> None:
    off = load(tmp_path, CLIENT).endpoint_spec()
    assert off.duplicate_below == 0 and off.duplicate_dscp == frozenset()
    on = load(tmp_path, CLIENT.replace('scheduler = "roundrobin"',
                                       "duplicate_below = 200\nduplicate_dscp = [46, 34, 46]"))
    assert on.duplicate_dscp == (34, 46)
    spec = on.endpoint_spec()
    assert spec.duplicate_below == 200 and spec.duplicate_dscp == frozenset({34, 46})


def write_private(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_inline_secrets_need_a_private_config(tmp_path: Path) -> None:
    """A private_key or preshared_key written into the config makes the
    config as secret as a key file: mode 600."""
    def exists(name: str) -> bool:
        return name == "eth0"

    path = write_private(tmp_path, CLIENT, 0o644)
    with pytest.raises(config.ConfigError) as err:
        config.load(path, Role.CLIENT, exists)
    assert str(err.value) == (
        f"{path}: interface.private_key: {path} holds this key and is open to group or "
        f"others; run: chmod 600 {path} (or move the key to private_key_file)")
    path.chmod(0o640)
    with pytest.raises(config.ConfigError, match=r"interface\.private_key: .*chmod 600"):
        config.load(path, Role.CLIENT, exists)
    path.chmod(0o600)
    assert config.load(path, Role.CLIENT, exists).private_key == decode_key(PRIV)
    # The private key in a file: an inline preshared key still makes it secret.
    key = tmp_path / "client.key"
    key.write_text(PRIV + "\n")
    key.chmod(0o600)
    psk = encode_key(generate_keypair()[0])
    text = CLIENT.replace(f'private_key = "{PRIV}"', 'private_key_file = "client.key"')
    path = write_private(tmp_path, text.replace("[peer]", f'[peer]\npreshared_key = "{psk}"'),
                         0o604)
    with pytest.raises(config.ConfigError, match=r"peer\.preshared_key: .* chmod 600"):
        config.load(path, Role.CLIENT, exists)
    # Public keys are no secret: a readable config without secrets is fine.
    path = write_private(tmp_path, text, 0o644)
    assert config.load(path, Role.CLIENT, exists).private_key == decode_key(PRIV)


def test_secrets_must_belong_to_root_or_the_user_running_stripe(tmp_path: Path) -> None:
    """Key files, and a config with inline secrets, owned by anyone else
    (who could replace the key) are refused; the owner travels with the
    files `stripe reload` ships, like the mode."""
    def exists(name: str) -> bool:
        return name == "eth0"

    stranger = 4242 if os.geteuid() != 4242 else 4243
    me = os.geteuid()
    text = CLIENT.replace(f'private_key = "{PRIV}"', 'private_key_file = "client.key"')
    path = write_private(tmp_path, text, 0o644)
    key = tmp_path / "client.key"
    key.write_text(PRIV + "\n")
    key.chmod(0o600)
    files: dict[str, object] = {}
    config.load(path, Role.CLIENT, exists, config.recording_reader(files))
    assert files[str(key)]["uid"] == me  # type: ignore[index]

    def shipped(key_owner: int, config_text: str = text, config_owner: int = me) -> config.Config:
        data = dict(files)
        data[str(key)] = {**files[str(key)], "uid": key_owner}  # type: ignore[dict-item]
        raw = config_text.encode()
        data[str(path)] = {"mode": 0o100600, "uid": config_owner,
                           "data": base64.b64encode(raw).decode()}
        return config.load(path, Role.CLIENT, exists, config.shipped_reader(data))

    assert shipped(0).private_key == decode_key(PRIV)  # root's
    assert shipped(me).private_key == decode_key(PRIV)
    with pytest.raises(config.ConfigError) as err:
        shipped(stranger)
    user = pwd.getpwuid(me).pw_name
    assert str(err.value) == (
        f"{path}: interface.private_key_file: {key} is owned by uid {stranger}, not by root "
        f"or the user running stripe ({user}); run: chown {user} {key}")
    with pytest.raises(config.ConfigError, match=r"interface\.private_key: .* owned by uid"):
        shipped(me, CLIENT, config_owner=stranger)
    assert shipped(me, CLIENT, config_owner=0).private_key == decode_key(PRIV)
    assert shipped(me, text, config_owner=stranger)  # no secret in it: any owner


def test_the_example_configs_load_when_private(tmp_path: Path) -> None:
    """configs/ and containers/config/ hold published example keys inline:
    copied with mode 600 (as their comments and the docs say) they load."""
    import shutil

    root = Path(__file__).parents[2]
    for name, role in (("configs/a.toml", Role.SERVER), ("configs/b.toml", Role.CLIENT),
                       ("containers/config/server.toml", Role.SERVER),
                       ("containers/config/client.toml", Role.CLIENT)):
        copy = tmp_path / name.replace("/", "-")
        shutil.copyfile(root / name, copy)
        copy.chmod(0o600)
        assert config.load(copy, role, lambda _name: True).role is role
        copy.chmod(0o644)
        with pytest.raises(config.ConfigError, match="chmod 600"):
            config.load(copy, role, lambda _name: True)


def test_a_missing_default_user_is_refused_unless_told_to_keep_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `nobody` (a minimal container) the process would go on as
    root without a word: that takes `user = ""` in the config."""
    import stripe.config.parse

    def no_nobody(name: str) -> pwd.struct_passwd:
        if name == "nobody":
            raise KeyError(name)
        return pwd.getpwnam(name)

    monkeypatch.setattr(stripe.config.parse.pwd, "getpwnam", no_nobody)
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, CLIENT)
    assert str(err.value) == (
        f"{tmp_path / 'c.toml'}: interface.user: the default user 'nobody' does not exist on "
        'this host; name another user to run as after set-up, or write user = "" to keep '
        "running as started (root)")
    keep = load(tmp_path, CLIENT.replace('name = "st0"', 'name = "st0"\nuser = ""'))
    assert keep.user is None
    with pytest.raises(config.ConfigError, match=r"interface\.user: no such user 'nobody'"):
        load(tmp_path, CLIENT.replace('name = "st0"', 'name = "st0"\nuser = "nobody"'))
