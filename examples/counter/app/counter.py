"""Page counter for python3-minimal: a socket HTTP server that keeps its count in Redis.

Speaks just enough of Redis's protocol (RESP) to send INCR; no third-party package needed.
"""
import os
import socket
import threading

STORE = os.environ.get("STORE", "store")
GREETING = os.environ.get("GREETING", "Hello")


def incr(key: str) -> int:
    with socket.create_connection((STORE, 6379), timeout=3) as s:
        k = key.encode()
        s.sendall(b"*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n" % (len(k), k))
        reply = s.recv(128)
    if not reply.startswith(b":"):
        raise OSError(f"unexpected reply from the store: {reply[:60]!r}")
    return int(reply[1:].split(b"\r\n", 1)[0])


def respond(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(5)
        request = conn.recv(4096).split(b"\r\n", 1)[0].split()
        path = request[1].decode(errors="replace") if len(request) > 1 else "/"
        status, body = "200 OK", ""
        if path == "/healthz":
            body = "ok\n"
        else:
            try:
                body = f"{GREETING}! hits: {incr('hits')}\n"
            except OSError as exc:
                status, body = "503 Service Unavailable", f"store unreachable: {exc}\n"
        data = body.encode()
        conn.sendall(f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


def main() -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 8000))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=respond, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
