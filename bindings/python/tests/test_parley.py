"""The Python binding against a real parleyd (PARLEYD) and libparley.so
(PARLEY_LIB): python3 -m unittest discover -s bindings/python"""
import os
import queue
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import parley  # noqa: E402

PARLEYD = os.environ.get("PARLEYD")
PARLEY_CLI = os.environ.get("PARLEY_CLI")
SECRET = "python-binding-test-secret"


def wait_for(q, pred, timeout=10.0):
    """The first item of q that pred accepts, within timeout seconds."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out")
        try:
            item = q.get(timeout=left)
        except queue.Empty:
            raise AssertionError("timed out")
        if pred(item):
            return item


@unittest.skipUnless(PARLEYD and os.environ.get("PARLEY_LIB"), "PARLEYD and PARLEY_LIB not set")
class ParleydTest(unittest.TestCase):
    @staticmethod
    def start(args):
        """A parleyd on a free port: (process, host, port)."""
        proc = subprocess.Popen([PARLEYD, "--listen", "127.0.0.1:0"] + args,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = proc.stdout.readline()
        m = re.search(r"parleyd listening on ([0-9.]+):(\d+)", line)
        if not m:
            proc.kill()
            raise RuntimeError("parleyd did not start: " + line)
        return proc, m.group(1), int(m.group(2))

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="parley-py-")
        cls.secret = os.path.join(cls.dir, "secret")
        with open(cls.secret, "w") as f:
            f.write(SECRET + "\n")
        # Messaging (/chat, JWTs) with the WebSocket echo, and the
        # reference test server's behaviour on "/" for the Socket.IO client.
        cls.proc, cls.host, cls.port = cls.start(
            ["--jwt-secret-file", cls.secret, "--ws-echo", "/echo",
             "--data-dir", os.path.join(cls.dir, "data")])
        cls.http = f"http://{cls.host}:{cls.port}"
        cls.proto, host, port = cls.start(["--protocol-test"])
        cls.proto_http = f"http://{host}:{port}"

    @classmethod
    def tearDownClass(cls):
        for p in (cls.proc, cls.proto):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
            p.stdout.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def token(self, user, role=None):
        out = subprocess.run([PARLEY_CLI, "token", "--secret-file", self.secret, "--user", user]
                             + (["--role", role] if role else []),
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def test_version(self):
        v = parley.version()
        major, minor, patch = (int(x) for x in v.split("."))
        self.assertEqual(parley.version_number(), major * 10000 + minor * 100 + patch)

    def test_websocket_echo(self):
        q = queue.Queue()
        ws = parley.WebSocket(f"ws://{self.host}:{self.port}/echo",
                              on_open=lambda p: q.put(("open",)),
                              on_message=lambda k, d: q.put(("message", k, d)),
                              on_close=lambda c, r, e: q.put(("close", c, e)))
        try:
            ws.connect()
            wait_for(q, lambda i: i[0] == "open")
            ws.send("hello")
            ws.send(b"\x00\x01\x02")
            self.assertEqual(wait_for(q, lambda i: i[0] == "message"),
                             ("message", parley.TEXT, b"hello"))
            self.assertEqual(wait_for(q, lambda i: i[0] == "message"),
                             ("message", parley.BINARY, b"\x00\x01\x02"))
            ws.close(1000, "bye")
            self.assertEqual(wait_for(q, lambda i: i[0] == "close")[1], 1000)
        finally:
            ws.free()

    def test_socketio(self):
        q = queue.Queue()
        c = parley.Client(self.proto_http)
        try:
            # The auth callback's string goes to the library (parley_strdup),
            # which frees it; --protocol-test echoes it as an "auth" event.
            s = c.socket("/", auth=lambda: {"token": "abc"},
                         on_connect=lambda rec: q.put(("connect",)))
            s.on("auth", lambda args: q.put(("auth", args)))
            s.on("message-back", lambda args: q.put(("back", args)))
            wait_for(q, lambda i: i[0] == "connect")
            self.assertEqual(wait_for(q, lambda i: i[0] == "auth")[1], [{"token": "abc"}])
            s.emit("message", 1, "two", {"three": 3})
            self.assertEqual(wait_for(q, lambda i: i[0] == "back")[1], [1, "two", {"three": 3}])
            s.emit("message-with-ack", "x", 42, ack=lambda err, args: q.put(("ack", err, args)))
            self.assertEqual(wait_for(q, lambda i: i[0] == "ack"), ("ack", 0, ["x", 42]))
        finally:
            c.free()

    def test_chat(self):
        q = queue.Queue()
        bob = parley.Chat(self.http, "bob", token=self.token("bob"),
                          on_state=lambda st: q.put(("bob-state", st)),
                          on_message=lambda m: q.put(("bob-msg", m)))
        # alice's token is asked for on each connection: a function.
        alice = parley.Chat(self.http, "alice", token=lambda: self.token("alice"),
                            on_state=lambda st: q.put(("alice-state", st)))
        try:
            wait_for(q, lambda i: i == ("bob-state", parley.ONLINE))
            wait_for(q, lambda i: i == ("alice-state", parley.ONLINE))
            cid = alice.send("bob", "hello from python")
            m = wait_for(q, lambda i: i[0] == "bob-msg")[1]
            self.assertEqual(m["text"], "hello from python")
            self.assertEqual(m["from"], "alice")
            self.assertEqual(m["client_id"], cid)
            self.assertEqual(m["conversation"], "dm:alice:bob")
            self.assertFalse(m["mine"])
        finally:
            alice.free()
            bob.free()

    def test_chat_notify(self):
        # parley_chat_notify from a notifier-role token to a user whose
        # store counts it unread; the socket API's errors come back with
        # their code and field.
        q = queue.Queue()
        ops = parley.Chat(self.http, "ops", token=self.token("ops", "notifier"),
                          on_state=lambda st: q.put(("ops", st)))
        plain = parley.Chat(self.http, "plain", token=self.token("plain"),
                            on_state=lambda st: q.put(("plain", st)))
        erin = parley.Store(self.http, "erin", token=self.token("erin"))
        try:
            wait_for(q, lambda i: i == ("ops", parley.ONLINE))
            wait_for(q, lambda i: i == ("plain", parley.ONLINE))
            n = ops.notify("erin", "assignment", "Essay due", body="by Friday",
                           priority="high", dedupe_key="essay-1")
            self.assertGreater(n["id"], 0)
            self.assertEqual((n["type"], n["priority"], n["title"], n["duplicate"]),
                             ("assignment", "high", "Essay due", False))
            again = ops.notify("erin", "assignment", "Essay due", dedupe_key="essay-1")
            self.assertTrue(again["duplicate"])
            self.assertEqual(again["id"], n["id"])

            with self.assertRaises(parley.ChatError) as cm:
                plain.notify("erin", "assignment", "not allowed")
            self.assertEqual(cm.exception.code, "forbidden")
            with self.assertRaises(parley.ChatError) as cm:
                ops.notify("erin", "homework", "bad type")
            self.assertEqual((cm.exception.code, cm.exception.field), ("invalid_field", "type"))
            with self.assertRaises(parley.ChatError) as cm:
                ops.notify("erin", "assignment", "")
            self.assertEqual(cm.exception.field, "title")

            # erin's device sees exactly the one notification, unread.
            fd = erin.fd()
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            got = {}
            erin.watch("notifications", lambda k, v: got.__setitem__(k, v))
            erin.watch("notifications/unread", lambda k, v: got.__setitem__(k, v))
            end = time.monotonic() + 10
            while time.monotonic() < end and not (got.get("notifications/unread") == 1 and
                                                   got.get("notifications")):
                if poller.poll(100):
                    erin.dispatch()
            self.assertEqual(got.get("notifications/unread"), 1, got)
            self.assertEqual([x["id"] for x in got["notifications"]], [n["id"]])
            self.assertEqual(got["notifications"][0]["title"], "Essay due")
        finally:
            ops.free()
            plain.free()
            erin.free()

    def test_store_dispatch_fd(self):
        got = []
        st = parley.Store(self.http, "carol", token=self.token("carol"))
        try:
            fd = st.fd()
            self.assertGreaterEqual(fd, 0)
            st.watch("connection", lambda k, v: got.append((k, v)))
            st.watch("messages/dm:carol:dave", lambda k, v: got.append((k, v)))
            poller = select.poll()
            poller.register(fd, select.POLLIN)

            def pump_until(pred, timeout=10.0):
                end = time.monotonic() + timeout
                while time.monotonic() < end:
                    if poller.poll(100):
                        st.dispatch()  # watchers run here, on this thread
                    if pred():
                        return
                self.fail("timed out; got %r" % got)

            pump_until(lambda: ("connection", {"state": "online"}) in got)
            cid = st.send("dave", "stored hello")
            pump_until(lambda: any(k.startswith("messages/") and v and
                                   v[-1].get("client_id") == cid and
                                   v[-1].get("status") == "sent" for k, v in got))
            msgs = st.get("messages/dm:carol:dave")  # freed with parley_free
            self.assertEqual(msgs[-1]["text"], "stored hello")
        finally:
            st.free()


if __name__ == "__main__":
    unittest.main()
