"""Exercise stdlib modules that need trusted native code: json, ssl, sqlite3, subprocess."""

import hashlib
import json
import sqlite3
import ssl
import subprocess

doc = json.loads(json.dumps({"a": [1, 2, 3]}))
assert doc == {"a": [1, 2, 3]}

ctx = ssl.create_default_context()
assert ctx.verify_mode == ssl.CERT_REQUIRED

db = sqlite3.connect(":memory:")
db.execute("create table t (x)")
db.executemany("insert into t values (?)", [(i,) for i in range(100)])
assert db.execute("select sum(x) from t").fetchone()[0] == 4950

out = subprocess.run(["/bin/sh", "-c", "echo child"], capture_output=True, text=True, check=True)
assert out.stdout == "child\n"

print("stdlib ok", hashlib.sha256(b"geode").hexdigest()[:16])
