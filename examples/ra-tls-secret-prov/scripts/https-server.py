"""A TLS server with the RA-TLS certificate gramine-ratls wrote (as nginx would use it):
answers one connection and exits. Usage: https-server.py CERT KEY PORT"""

import socket
import ssl
import sys

cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
with socket.create_server(("127.0.0.1", port)) as srv:
    print("serving", flush=True)
    conn, _ = srv.accept()
    with ctx.wrap_socket(conn, server_side=True) as tls:
        tls.recv(100)
        tls.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello from the shield\n")
