"""The lab fleet: real SSH hosts (network + mount namespaces running sshd) on one Linux machine."""
