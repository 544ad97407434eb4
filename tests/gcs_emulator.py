"""A local, offline stand-in for Google Cloud Storage that every client of the library reaches.

`gcp-storage-emulator` (PyPI) serves GCS's JSON and XML APIs over plain HTTP on 127.0.0.1.
The clients find it as follows:

* tensorstore (orbax's array writes): TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT.
* google-cloud-storage (orbax asks it whether a bucket has a hierarchical namespace):
  STORAGE_EMULATOR_HOST (gcsfs, epath's backend only where TensorFlow is absent, reads it too).
* TensorFlow's GCS filesystem (tf.io.gfile, tf.data's readers, TensorBoard's writer, TFDS, and
  etils.epath, which uses tf.io.gfile for gs:// whenever TensorFlow is installed) has no
  endpoint setting: its URLs are fixed to https://www.googleapis.com and
  https://storage.googleapis.com. Its HTTP client (libcurl) does honour `https_proxy` and
  `CURL_CA_BUNDLE`, and `GOOGLE_AUTH_TOKEN_FOR_TESTING` replaces its credentials. So `Proxy`
  below accepts curl's CONNECT to those hosts, terminates TLS with a self-signed certificate
  for *.googleapis.com (made with the openssl command; trusted through CURL_CA_BUNDLE) and
  forwards each request to the emulator (as plain HTTP, chunked bodies reassembled: the
  emulator reads Content-Length bodies only).

`emulator_env(...)` is the environment for a process (train.py) that talks to the emulator.
"""

from __future__ import annotations

import http.client
import http.server
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "proxy-authorization", "proxy-authenticate"}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def make_certificate(folder: str) -> tuple[str, str]:
  """A self-signed certificate for the Google storage hosts: (certificate, key) paths."""
  cert, key = os.path.join(folder, "googleapis.pem"), os.path.join(folder, "googleapis.key")
  subprocess.run(
      ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
       "-days", "2", "-subj", "/CN=storage.googleapis.com", "-addext",
       "subjectAltName=DNS:storage.googleapis.com,DNS:www.googleapis.com,DNS:*.googleapis.com",
       "-addext", "basicConstraints=critical,CA:TRUE"],
      check=True, capture_output=True)
  return cert, key


class _Handler(http.server.BaseHTTPRequestHandler):
  """Forwards each request to the emulator; CONNECT switches the connection to TLS first."""

  protocol_version = "HTTP/1.1"
  upstream: tuple[str, int]
  tls: ssl.SSLContext

  def log_message(self, *args):  # quiet
    pass

  def do_CONNECT(self):
    self.send_response(200, "Connection established")
    self.end_headers()
    self.wfile.flush()
    self.connection = self.tls.wrap_socket(self.connection, server_side=True)
    self.rfile = self.connection.makefile("rb", self.rbufsize)
    self.wfile = self.connection.makefile("wb", 0)
    self.close_connection = False  # go on reading requests, now inside TLS

  def _forward(self):
    path = self.path
    if "://" in path:  # a plain-HTTP proxy request names the whole URL
      path = "/" + path.split("://", 1)[1].split("/", 1)[1]
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
      body = self._read_chunked()  # the emulator reads Content-Length bodies only
    else:
      length = int(self.headers.get("Content-Length") or 0)
      body = self.rfile.read(length) if length else b""
    # The Host header stays the client's: the emulator builds the resumable-upload URL from
    # it (http://www.googleapis.com/...), so curl sends the upload's parts here as well.
    headers = {k: v for k, v in self.headers.items()
               if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"}
    headers["Content-Length"] = str(len(body))
    conn = http.client.HTTPConnection(*self.upstream, timeout=120)
    try:
      conn.request(self.command, path, body=body, headers=headers)
      response = conn.getresponse()
      data = response.read()
    finally:
      conn.close()
    if os.environ.get("GCS_PROXY_LOG"):
      print("proxy:", self.command, path[:160], response.status, file=sys.stderr, flush=True)
    self.send_response(response.status, response.reason)
    for k, v in response.getheaders():
      if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
        self.send_header(k, v)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(data)

  def _read_chunked(self) -> bytes:
    parts = []
    while True:
      size = int(self.rfile.readline().split(b";")[0].strip(), 16)
      if size == 0:
        while self.rfile.readline().strip():  # trailers, up to the blank line
          pass
        return b"".join(parts)
      parts.append(self.rfile.read(size))
      self.rfile.readline()  # the CRLF after each chunk

  do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _forward


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
  daemon_threads = True


def _patch(objects) -> None:
  """Two gaps of the emulator that the clients here fall into, filled in its handlers."""
  from gcp_storage_emulator import server
  media_upload, download = objects._media_upload, objects.download

  def _media_upload(request, response, storage):
    # It reads an empty upload body as None and fails on it; TensorFlow uploads an empty
    # object for each folder it creates (tf.io.gfile.makedirs).
    if request.data is None:
      request._data = b""
    return media_upload(request, response, storage)

  def _download(request, response, storage, *args, **kwargs):
    # Its downloads lack the object's generation headers, from which tensorstore (orbax's
    # OCDBT manifest reads) takes the generation it writes against.
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:  # noqa: BLE001 - not found: the download itself answers 404
      pass
    return download(request, response, storage, *args, **kwargs)

  objects._media_upload, objects.download = _media_upload, _download
  for _, handlers in server.HANDLERS:  # the routes hold the function itself
    for method, handler in handlers.items():
      if handler is download:
        handlers[method] = _download
  objects._flax_resnet_patched = True


def start_emulator(port: int, bucket: str):
  """gcp-storage-emulator in this process (a thread), in memory, with `bucket` created."""
  import logging
  from gcp_storage_emulator.handlers import objects
  from gcp_storage_emulator.server import create_server
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  if not getattr(objects, "_flax_resnet_patched", False):
    _patch(objects)
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.start()
  return server


class Proxy:
  """An HTTPS-intercepting proxy on 127.0.0.1 that sends TensorFlow's GCS requests to
  the emulator at `upstream`."""

  def __init__(self, upstream: tuple[str, int], cert: str, key: str):
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    handler = type("Handler", (_Handler,), {"upstream": upstream, "tls": tls})
    self.server = _ThreadingServer(("127.0.0.1", 0), handler)
    self.port = self.server.server_address[1]
    self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

  def start(self):
    self._thread.start()
    return self

  def stop(self):
    self.server.shutdown()
    self.server.server_close()


def emulator_env(emulator_port: int, proxy_port: int, cert: str) -> dict[str, str]:
  """Environment variables that point tensorstore, google-cloud-storage and TensorFlow at the
  emulator."""
  endpoint = f"http://127.0.0.1:{emulator_port}"
  return {
      "TENSORSTORE_GCS_HTTP_URL": endpoint,
      "STORAGE_EMULATOR_HOST": endpoint,
      "https_proxy": f"http://127.0.0.1:{proxy_port}",
      "http_proxy": f"http://127.0.0.1:{proxy_port}",
      # Everything else (the emulator itself, jax.distributed's coordinator) goes direct.
      "no_proxy": "127.0.0.1,localhost",
      "NO_PROXY": "127.0.0.1,localhost",
      "CURL_CA_BUNDLE": cert,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "NO_GCE_CHECK": "true",
  }
