# Run in the shield by tests/attestation/test_shield.py: per-process state and local reports.
import os
import threading

DEV = "/dev/attestation"


def put(name, data):
    with open(f"{DEV}/{name}", "wb") as f:
        f.write(data)


def get(name):
    with open(f"{DEV}/{name}", "rb") as f:
        return f.read()


put("user_report_data", b"parent")
rfd, wfd = os.pipe()
pid = os.fork()
if pid == 0:
    start = get("user_report_data")
    put("user_report_data", b"child")
    os.write(wfd, (start.hex() + " " + get("quote").hex()).encode())
    os._exit(0)
os.close(wfd)
chunks = []
while chunk := os.read(rfd, 65536):
    chunks.append(chunk)
os.waitpid(pid, 0)
child_start, child_quote = b"".join(chunks).decode().split()

seen = {}
thread = threading.Thread(target=lambda: seen.update(quote=get("quote")))
thread.start()
thread.join()

print("child-start:", child_start)
print("child-quote:", child_quote)
print("thread-quote:", seen["quote"].hex())
print("parent-quote:", get("quote").hex())
put("target_info", get("my_target_info"))
put("user_report_data", b"local")
print("report-self:", get("report").hex())
put("target_info", bytes(range(256)) * 2)
print("report-other:", get("report").hex())
