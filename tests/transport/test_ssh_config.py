from orchestrator.transport.ssh import SSHConnection, SSHTarget, resolve_target

CONFIG = """
Host pi-*
    User pi
    IdentityFile ~/.ssh/pi_ed25519
    UserKnownHostsFile ~/.ssh/fleet_known_hosts
    ProxyJump ops@bastion.example:2222

Host pi-barn
    HostName 192.168.7.40
    Port 2200

Host 10.0.0.5
    User admin
"""


def resolve(tmp_path, target):
    cfg = tmp_path / "config"
    cfg.write_text(CONFIG)
    return resolve_target(target, str(cfg))


def test_patterns_fill_in_user_key_known_hosts_and_jump(tmp_path):
    t = resolve(tmp_path, SSHTarget("pi-barn", "pi-barn"))
    assert (t.address, t.port, t.user) == ("192.168.7.40", 2200, "pi")
    assert t.key_path.endswith("/.ssh/pi_ed25519") and t.known_hosts.endswith("/.ssh/fleet_known_hosts")
    assert (t.proxy_jump.address, t.proxy_jump.port, t.proxy_jump.user) == ("bastion.example", 2222, "ops")


def test_a_host_can_be_matched_by_its_address(tmp_path):
    t = resolve(tmp_path, SSHTarget("db", "10.0.0.5"))
    assert (t.address, t.user, t.proxy_jump) == ("10.0.0.5", "admin", None)


def test_manifest_settings_win_over_the_config(tmp_path):
    t = resolve(tmp_path, SSHTarget("pi-kitchen", "192.168.1.20", port=2022, user="deploy"))
    assert (t.address, t.port, t.user) == ("192.168.1.20", 2022, "deploy")


def test_no_config_file_changes_nothing(tmp_path):
    t = SSHTarget("a", "10.1.1.1")
    assert resolve_target(t, str(tmp_path / "missing")) is t


def test_remote_command_line_is_quoted_argument_by_argument():
    line = SSHConnection.command_line(["python3", "/var/lib/orch/agent/x.pyz", "logs", "web; rm -rf /", "$(id)"])
    assert line == "python3 /var/lib/orch/agent/x.pyz logs 'web; rm -rf /' '$(id)'"


def test_openssh_prefers_the_classic_key_exchange_unless_told_otherwise(monkeypatch):
    """The hybrid post-quantum exchange OpenSSH 9 picks by default costs ~0.2 s of CPU per
    handshake here (20 cold hosts: seconds): orch puts curve25519 first; ORCH_SSH_KEX says
    otherwise ("default": OpenSSH's own order)."""
    import shutil
    if not shutil.which("ssh"):
        import pytest
        pytest.fail("the OpenSSH client is part of the install (.ci/apt-packages.txt)")
    conn = SSHConnection(SSHTarget("h", "10.0.0.9"))
    monkeypatch.delenv("ORCH_SSH_KEX", raising=False)
    argv = conn.openssh_argv(["true"])
    assert "KexAlgorithms=^curve25519-sha256" in argv
    monkeypatch.setenv("ORCH_SSH_KEX", "default")
    assert not [a for a in conn.openssh_argv(["true"]) if a.startswith("KexAlgorithms=")]
    monkeypatch.setenv("ORCH_SSH_KEX", "sntrup761x25519-sha512@openssh.com")
    assert "KexAlgorithms=sntrup761x25519-sha512@openssh.com" in conn.openssh_argv(["true"])
