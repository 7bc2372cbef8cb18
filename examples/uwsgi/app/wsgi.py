"""A small WSGI app: says hello, where it runs, and answers /healthz."""
import os
import platform
import socket

GREETING = os.environ.get("GREETING", "Hello")


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/healthz":
        body = b"ok\n"
    else:
        body = f"{GREETING} from uWSGI on {platform.machine()} ({socket.gethostname()})\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
