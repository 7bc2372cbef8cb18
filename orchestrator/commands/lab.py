"""`orch lab up|status|ssh|down|power-cut|boot|reboot|link`: a fleet of real SSH hosts on this machine."""
from __future__ import annotations

import json
import os
import sys

HELP = "make, inspect and remove the lab fleet (real sshd hosts in namespaces on this machine)"
EXAMPLES = (
    'orch lab up --hosts 2 --arm64 1',
    'orch lab ssh arm64-1 "uname -m; cat /etc/orch/platform"',
    'orch lab up --hosts 0 --arm64 0 --booted 1 --bullseye 1',
    'orch lab up --hosts 0 --arm64 0 --booted-arm64 1 --booted-armv7 1',
    'orch lab power-cut booted-1',
    'orch lab boot booted-1',
    'orch lab link amd64-1 rate 2mbit',
    'orch lab down',
)


def add_arguments(parser) -> None:
    import argparse
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument("--name", default="lab", help="lab name (default: lab); labs stand side by side "
                       "($ORCH_LAB_PREFIX, when set, is put in front of every lab name)")
    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", parents=[named], help="create or update the lab (idempotent)")
    up.add_argument("--hosts", type=int, default=2, help="amd64 hosts (default 2)")
    up.add_argument("--arm64", type=int, default=1, help="arm64 hosts (default 1)")
    up.add_argument("--armv7", type=int, default=0, help="32-bit arm hosts (default 0)")
    up.add_argument("--booted", type=int, default=0,
                    help="amd64 hosts that boot Debian bookworm with systemd as PID 1 (default 0)")
    up.add_argument("--bullseye", type=int, default=0,
                    help="booted hosts running Debian bullseye, python3 3.9 (default 0)")
    up.add_argument("--booted-arm64", type=int, default=0,
                    help="arm64 hosts that boot Debian bookworm with systemd, all under qemu-user (default 0)")
    up.add_argument("--booted-armv7", type=int, default=0,
                    help="the same for 32-bit armv7 (Debian armhf) (default 0)")
    up.add_argument("--link-rate", default=None, help="throttle each host's link, e.g. 10mbit (tc tbf)")
    up.add_argument("--json", action="store_true", help="print the hosts as JSON")
    st = sub.add_parser("status", parents=[named], help="list the lab's hosts")
    st.add_argument("--json", action="store_true", help="print a JSON list")
    ssh = sub.add_parser("ssh", parents=[named], help="a login shell on a lab host, or run one command line there "
                         "(the words after HOST, joined with spaces, as ssh does)")
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="remote command line (default: a login shell)")
    sub.add_parser("down", parents=[named], help="remove everything the lab made (idempotent)")
    for action, text in (("power-cut", "pull a host's plug: every process killed at once, memory and tmpfs lost, "
                                       "the disk kept"),
                         ("boot", "switch a host on (after a power cut); waits for its sshd"),
                         ("reboot", "reboot a host (booted hosts shut down in order first)")):
        fault = sub.add_parser(action, parents=[named], help=text)
        fault.add_argument("host")
    link = sub.add_parser("link", parents=[named], help="cut, restore or throttle a host's link")
    link.add_argument("host")
    link.add_argument("state", choices=("down", "up", "rate"))
    link.add_argument("rate", nargs="?", default=None, help="with rate: a tc rate such as 2mbit, or none")
    sub.add_parser("list", help="names of labs that are up")


def run(args) -> int:
    from orchestrator.errors import LabError, UsageError
    from orchestrator.lab.layout import LabLayout, LabSpec, lab_name
    from orchestrator.lab.machine import LabMachine, known_labs, load_layout
    from orchestrator.tools import find_tool

    action = args.lab_command
    if action != "list":
        args.name = lab_name(args.name, os.environ)
    if action == "up":
        spec = LabSpec(args.name, args.hosts, args.arm64, args.armv7, args.link_rate,
                       booted=args.booted, bullseye=args.bullseye, booted_arm64=args.booted_arm64,
                       booted_armv7=args.booted_armv7).validate()
        hosts = LabMachine(LabLayout(spec)).up()
        _print_hosts(hosts, args.json)
        return 0
    if action == "list":
        print("\n".join(known_labs()))
        return 0
    if action == "down":
        try:
            layout = load_layout(args.name)
        except LabError:
            layout = LabLayout(LabSpec(args.name))
        LabMachine(layout).down()
        print(f"lab {args.name} is down")
        return 0
    layout = load_layout(args.name)
    if action == "status":
        hosts = LabMachine(layout).status()
        _print_hosts(hosts, args.json)
        return 0 if all(h["up"] for h in hosts) else 1
    if action in ("power-cut", "boot", "reboot", "link"):
        return _fault(args, layout)
    if action == "ssh":
        host = layout.host(args.host)
        argv = [find_tool("ssh"), "-i", str(layout.user_key),
                "-o", f"UserKnownHostsFile={layout.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
                "-p", str(host.ssh_port), f"root@{host.address}"]
        if args.cmd:
            # like OpenSSH: the words after the host, joined with spaces, are one command line that
            # the host's shell runs (`orch lab ssh amd64-1 'cd /etc; ls'`). It is the user's own
            # line for a lab host, typed to be a shell line; no input of orch's goes into it.
            argv += ["--", " ".join(args.cmd)]
        sys.stdout.flush()
        os.execv(argv[0], argv)
    raise UsageError(f"unknown lab action {action!r}")


def _fault(args, layout) -> int:
    from orchestrator.lab import faults
    from orchestrator.lab.machine import LabMachine

    host = layout.host(args.host)
    machine = LabMachine(layout)
    if args.lab_command == "power-cut":
        faults.run_power_cut(machine, host)
        print(f"{host.name}: power cut")
    elif args.lab_command == "boot":
        took = faults.run_boot(machine, host)
        print(f"{host.name}: up in {took:.1f}s" if took else f"{host.name}: already on")
    elif args.lab_command == "reboot":
        print(f"{host.name}: rebooted, up in {faults.run_reboot(machine, host):.1f}s")
    else:
        faults.run_link(host, args.state, args.rate)
        print(f"{host.name}: link {args.state}{' ' + args.rate if args.rate else ''}")
    return 0


def _print_hosts(hosts, as_json: bool) -> None:
    if as_json:
        print(json.dumps(hosts, indent=2))
        return
    print(f"{'HOST':<15} {'ADDRESS':<15} {'PLATFORM':<13} {'UP':<4} LINK")
    for h in hosts:
        print(f"{h['name']:<15} {h['address']:<15} {h['platform']:<13} {'yes' if h['up'] else 'NO':<4} "
              f"{h['link_rate'] or '-'}")
