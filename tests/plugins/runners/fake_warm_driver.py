"""Stands in for lakehouse_jobs/warm_driver.py in the pool's unit tests: the same protocol, no Spark.

A request's ``script`` says what to do: ``echo`` prints its argv and the run's environment variable
FAKE_SECRET, ``fail`` reports a failure, ``crash`` kills the driver, ``hang`` never answers.
"""

import json
import os
import socket
import sys
import time

MARKER = "\x1elakehouse-warm-run-end"
path = sys.argv[sys.argv.index("--socket") + 1]
print(f"fake driver {os.getpid()} starting", flush=True)
if "--start-delay" in sys.argv:  # as slow to become ready as a JVM
    time.sleep(float(sys.argv[sys.argv.index("--start-delay") + 1]))
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(1)
conn, _ = server.accept()
for line in conn.makefile("r"):
    request = json.loads(line)
    what = request["script"]
    if what == "crash":
        print("about to crash", flush=True)
        os._exit(3)
    if what == "hang":
        print("hanging", flush=True)
        time.sleep(3600)
    print(f"pid={os.getpid()} argv={request['argv']} secret={request['env'].get('FAKE_SECRET')}", flush=True)
    print(MARKER, flush=True)
    outcome = {"status": "ok"} if what == "echo" else {"status": "failed", "error": "ValueError: told to fail"}
    conn.sendall((json.dumps(outcome) + "\n").encode())
