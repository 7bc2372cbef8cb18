"""A tiny HTTP server for python3-minimal (no http.server or json there): sockets and threads."""
import configparser
import os
import socket
import sys
import threading

DATA = "/data/visits"
SECRET = "/run/secrets/greeting_key"


def load_config(argv):
    path = argv[argv.index("--config") + 1] if "--config" in argv else "/etc/pyapp/app.conf"
    parser = configparser.ConfigParser()
    parser.read(path)
    return parser["app"] if parser.has_section("app") else {}


def count_visit(lock):
    with lock:
        try:
            with open(DATA) as fh:
                n = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            n = 0
        n += 1
        try:
            tmp = DATA + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(str(n))
            os.replace(tmp, DATA)
        except OSError:
            pass
        return n


def respond(conn, status, body):
    data = body.encode()
    head = (f"HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    conn.sendall(head.encode() + data)


def handle(conn, conf, lock):
    try:
        request = conn.recv(4096).decode(errors="replace")
        path = request.split(" ")[1] if request.count(" ") >= 2 else "/"
        if path == "/healthz":
            respond(conn, "200 OK", "ok\n")
            return
        visits = count_visit(lock)
        has_secret = os.path.exists(SECRET)
        try:
            with open("/etc/pyapp/built-with") as fh:
                built = fh.read().strip()
        except OSError:
            built = "?"
        body = (f"pyapp release {conf.get('release', '?')} on {os.uname().machine} "
                f"(built with {built})\nvisits: {visits}\nsecret mounted: {has_secret}\n")
        respond(conn, "200 OK", body)
    except OSError:
        pass
    finally:
        conn.close()


def main(argv):
    conf = load_config(argv)
    lock = threading.Lock()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(os.environ.get("PORT", "8000"))))
    srv.listen(64)
    print(f"pyapp {conf.get('release', '?')} listening on :8000", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn, conf, lock), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv)
