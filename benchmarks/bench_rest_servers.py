"""HTTP server libraries for the REST front end, side by side in one run.

    python benchmarks/bench_rest_servers.py --results-file rest_servers.json

Runs the same bare endpoint (a ~100-byte JSON answer to `GET`, the first
bytes of the body back for a 20 KB `POST`) on each server in its own
process, all running at once and measured in turns (`--rounds`, the order
reversed every other round, so that a change of machine load hits them
alike): `http.server` with a thread per connection
(the shape of `selfy serve`'s former REST server), aiohttp's low-level
server, and uvicorn with httptools and with h11 (skipped when uvicorn is not
installed; it is not a dependency). Clients are threads of this process
over kept-alive connections, a GET and a POST in turn, for `--seconds` at
each of `--clients`. Records requests per second (`<server>_c<clients>`,
the median of the rounds listed in `<server>_rounds_c<clients>`)
and each server's peak RSS (`<server>_peak_rss_mb`). No model runs: this
is the cost of the HTTP layer alone, which `bench_serving_hostile.py`'s
`rest_rps_*` measures under the real predictor. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import importlib.util
import json
import socket
import subprocess
import sys
import time

from _common import free_port, write_results

_ANSWER = json.dumps({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}).encode()
_POST_BODY = b"[" + b"0," * 10_000 + b"0]"

_SERVERS = {
    "http_server": """
import http.server, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
    def _reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._reply(ANSWER)
    def do_POST(self):
        self._reply(self.rfile.read(int(self.headers["Content-Length"]))[:10])
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 1024
Server(("127.0.0.1", PORT), Handler).serve_forever()
""",
    "aiohttp": """
import asyncio
from aiohttp import web, web_server
async def handler(request):
    if request.method == "POST":
        body = (await request.read())[:10]
    else:
        body = ANSWER
    return web.Response(body=body, content_type="application/json")
async def main():
    server = web_server.Server(handler, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", PORT, backlog=1024)
    await asyncio.Event().wait()
asyncio.run(main())
""",
    "uvicorn_httptools": """
import uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    body = body[:10] if scope["method"] == "POST" else ANSWER
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=PORT, http="HTTP_IMPLEMENTATION", loop="asyncio",
            log_level="warning", access_log=False, backlog=1024)
""",
}
_SERVERS["uvicorn_h11"] = _SERVERS["uvicorn_httptools"].replace("HTTP_IMPLEMENTATION", "h11")
_SERVERS["uvicorn_httptools"] = _SERVERS["uvicorn_httptools"].replace("HTTP_IMPLEMENTATION", "httptools")


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,32,64", help="concurrent client counts")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per client count")
    parser.add_argument("--results-file", default=None)
    return parser.parse_args(argv)


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for process {pid}")


def _requests_per_second(port: int, num_clients: int, seconds: float) -> float:
    end = time.monotonic() + seconds

    def client(_) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        count = 0
        try:
            while time.monotonic() < end:
                for method, body in (("GET", None), ("POST", _POST_BODY)):
                    connection.request(method, "/v1/models/selfy", body=body)
                    response = connection.getresponse()
                    response.read()
                    count += response.status == 200
        finally:
            connection.close()
        return count

    with concurrent.futures.ThreadPoolExecutor(num_clients) as pool:
        return round(sum(pool.map(client, range(num_clients))) / seconds)


def _wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no server on port {port} within 30 s")


def main(argv=None) -> int:
    args = _parse_args(argv)
    results: dict = {"bench": "rest_servers", "seconds": args.seconds, "rounds": args.rounds}
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for name, code in _SERVERS.items():
            if name.startswith("uvicorn") and importlib.util.find_spec("uvicorn") is None:
                results[f"{name}_skipped"] = "uvicorn is not installed"
                continue
            port = free_port()
            process = subprocess.Popen([sys.executable, "-c", f"ANSWER = {_ANSWER!r}\nPORT = {port}\n{code}"])
            servers[name] = process, port
            _wait_for_port(port, process)
        for num_clients in map(int, args.clients.split(",")):
            rounds: dict[str, list[float]] = {name: [] for name in servers}
            for round_index in range(args.rounds):
                names = list(servers) if round_index % 2 == 0 else list(servers)[::-1]
                for name in names:
                    rounds[name].append(_requests_per_second(servers[name][1], num_clients, args.seconds))
            for name, values in rounds.items():
                results[f"{name}_c{num_clients}"] = sorted(values)[len(values) // 2]
                results[f"{name}_rounds_c{num_clients}"] = values
        for name, (process, _) in servers.items():
            results[f"{name}_peak_rss_mb"] = _peak_rss_mb(process.pid)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
