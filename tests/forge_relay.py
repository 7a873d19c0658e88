"""The stand-in relay of tests/attest_forge.py and tests/kemcert_forge.py:
an HTTP man in the middle between a client and a real veild, which passes
everything on and lets the tool that runs it change what it chooses.

  serve(upstream, port_file, answer)
      listens on 127.0.0.1 (a free port), writes the port to PORT_FILE once
      it listens (whole, through PORT_FILE.tmp) and serves each GET and POST
      until it is stopped: answer(method, path, forward) gives the reply as
      (status, headers, body bytes); forward() sends the request as it came
      (less Host, Content-Length and Connection) to UPSTREAM + path and
      returns veild's reply the same way, an HTTP error status included.
      The reply's headers go back to the client but for the ones a relay
      sets itself (Content-Length, Connection, Transfer-Encoding, Date,
      Server).
"""
import http.server
import os
import urllib.error
import urllib.request

HOP_REQUEST = ("host", "content-length", "connection")
HOP_REPLY = ("content-length", "connection", "transfer-encoding", "date",
             "server")


def serve(upstream, port_file, answer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def forward(self, method, body):
            req = urllib.request.Request(upstream + self.path, data=body,
                                         method=method)
            for k, v in self.headers.items():
                if k.lower() not in HOP_REQUEST:
                    req.add_header(k, v)
            try:
                r = urllib.request.urlopen(req, timeout=60)
                return r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers, e.read()

        def relay(self, method):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            status, headers, data = answer(
                method, self.path, lambda: self.forward(method, body))
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in HOP_REPLY:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.relay("GET")

        def do_POST(self):
            self.relay("POST")

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()
