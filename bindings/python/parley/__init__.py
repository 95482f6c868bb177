"""Python bindings for libparley (ctypes), and the model for other FFIs.

The library is found at $PARLEY_LIB, else as libparley.so.0 on the loader's
path. Every option struct is declared here as a prefix of the C struct (the
fields this module uses); its `size` member tells the library how much of it
there is, and the library takes its defaults for the rest. See README.md.
"""
import ctypes
import json
import os
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_char_p, c_double, c_int, c_int64,
                    c_size_t, c_uint, c_uint32, c_uint64, c_void_p)

__all__ = ["lib", "version", "version_number", "ParleyError", "WebSocket", "Client", "Chat",
           "Store"]

lib = ctypes.CDLL(os.environ.get("PARLEY_LIB") or "libparley.so.0")


class ParleyError(Exception):
    def __init__(self, code, what=""):
        self.code = code
        text = lib.parley_strerror(code).decode()
        super().__init__(f"{what}: {text} ({code})" if what else f"{text} ({code})")


def _check(rc, what):
    if rc != 0:
        raise ParleyError(rc, what)
    return rc


def _b(s):
    return s.encode() if isinstance(s, str) else s


def _fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_fn("parley_strerror", c_char_p, c_int)
_fn("parley_version", c_char_p)
_fn("parley_version_number", c_int)
# Memory crossing the API: c_void_p, never c_char_p (which would copy the
# bytes into a Python object and lose the pointer the library must free).
_fn("parley_alloc", c_void_p, c_size_t)
_fn("parley_strdup", c_void_p, c_char_p)
_fn("parley_free", None, c_void_p)


def version():
    """The library's version string, "MAJOR.MINOR.PATCH"."""
    return lib.parley_version().decode()


def version_number():
    """MAJOR*10000 + MINOR*100 + PATCH."""
    return lib.parley_version_number()


def _owned_string(s):
    """A copy of s in library-owned memory (parley_strdup), as callbacks
    whose string the library frees with parley_free must return."""
    if s is None:
        return None
    p = lib.parley_strdup(_b(s))
    if not p:
        raise MemoryError()
    return p


# Option structs: X_opts_init_size(o, sizeof prefix) writes the library's
# defaults into the prefix declared here (nothing past it) and sets `size`.


def _init_opts(struct_type, init_name):
    init = _fn(init_name + "_size", None, c_void_p, c_size_t)
    o = struct_type()
    init(byref(o), ctypes.sizeof(struct_type))
    if o.size != ctypes.sizeof(struct_type):
        raise ParleyError(-2, f"{init_name}: the library's struct is smaller than ours")
    return o


def _args_json(args):
    """A parley_args * as a Python list."""
    if not args:
        return []
    a = args.contents
    return json.loads(ctypes.string_at(a.json, a.json_len).decode()) if a.json else []


class _Args(Structure):
    _fields_ = [("json", c_void_p), ("json_len", c_size_t), ("bins", c_void_p),
                ("nbins", c_size_t)]


# ---- the WebSocket client (ws.h) ----

_WS_OPEN = CFUNCTYPE(None, c_void_p, c_char_p, c_void_p)
_WS_MESSAGE = CFUNCTYPE(None, c_void_p, c_int, c_void_p, c_size_t, c_void_p)
_WS_CLOSE = CFUNCTYPE(None, c_void_p, c_int, c_void_p, c_size_t, c_int, c_void_p)


class _WsOpts(Structure):
    # Callbacks come last in parley_ws_opts, so this prefix is the whole of
    # the 0.1 struct up to on_close.
    _fields_ = [("size", c_size_t), ("url", c_char_p), ("headers", c_void_p),
                ("nheaders", c_size_t), ("protocols", c_void_p), ("nprotocols", c_size_t),
                ("permessage_deflate", c_int), ("ca_file", c_char_p), ("insecure", c_int),
                ("proxy", c_char_p), ("connect_timeout_ms", c_uint32), ("max_message", c_uint64),
                ("ping_interval_ms", c_uint32), ("ping_timeout_ms", c_uint32),
                ("max_output", c_size_t), ("reconnect", c_int), ("reconnect_delay_ms", c_uint32),
                ("reconnect_delay_max_ms", c_uint32), ("reconnect_attempts", c_uint),
                ("reconnect_random", c_void_p), ("queue_max_count", c_size_t),
                ("queue_max_bytes", c_size_t), ("queue_path", c_char_p), ("ack_on_write", c_int),
                ("on_open", _WS_OPEN), ("on_message", _WS_MESSAGE), ("on_pong", c_void_p),
                ("on_close", _WS_CLOSE)]


_fn("parley_ws_new", c_int, c_void_p, POINTER(_WsOpts), POINTER(c_void_p))
_fn("parley_ws_connect", c_int, c_void_p)
_fn("parley_ws_send", c_int, c_void_p, c_int, c_void_p, c_size_t)
_fn("parley_ws_close", c_int, c_void_p, c_int, c_char_p)
_fn("parley_ws_free", None, c_void_p)

TEXT, BINARY = 1, 2


class WebSocket:
    """A WebSocket client on a loop thread of its own. Callbacks run on that
    thread: on_open(protocol), on_message(kind, bytes), on_close(code,
    reason, err)."""

    def __init__(self, url, on_open=None, on_message=None, on_close=None):
        o = _init_opts(_WsOpts, "parley_ws_opts_init")
        self._url = _b(url)
        o.url = self._url
        # The C callbacks must outlive the handle: kept on self.
        self._cbs = (
            _WS_OPEN(lambda ws, proto, u: on_open and on_open(proto and proto.decode())),
            _WS_MESSAGE(lambda ws, t, data, n, u: on_message and on_message(
                t, ctypes.string_at(data, n))),
            _WS_CLOSE(lambda ws, code, r, rlen, err, u: on_close and on_close(
                code, ctypes.string_at(r, rlen).decode(errors="replace") if r else "", err)))
        o.on_open, o.on_message, o.on_close = self._cbs
        self._h = c_void_p()
        _check(lib.parley_ws_new(None, byref(o), byref(self._h)), "parley_ws_new")

    def connect(self):
        _check(lib.parley_ws_connect(self._h), "parley_ws_connect")

    def send(self, data):
        kind = TEXT if isinstance(data, str) else BINARY
        data = _b(data)
        _check(lib.parley_ws_send(self._h, kind, data, len(data)), "parley_ws_send")

    def close(self, code=1000, reason=""):
        return lib.parley_ws_close(self._h, code, _b(reason))

    def free(self):
        if self._h:
            lib.parley_ws_free(self._h)
            self._h = None


# ---- the Socket.IO client (client.h) ----

_SIO_AUTH = CFUNCTYPE(c_void_p, c_void_p, c_void_p)
_SIO_CONNECT = CFUNCTYPE(None, c_void_p, c_int, c_void_p)
_SIO_DISCONNECT = CFUNCTYPE(None, c_void_p, c_char_p, c_void_p)
_SIO_CONNECT_ERROR = CFUNCTYPE(None, c_void_p, c_char_p, c_char_p, c_void_p)
_SIO_EVENT = CFUNCTYPE(None, c_void_p, c_char_p, POINTER(_Args), c_int64, c_void_p)
_SIO_ACK = CFUNCTYPE(None, c_void_p, c_int, POINTER(_Args), c_void_p)


class _ClientOpts(Structure):
    # A prefix of parley_client_opts: everything after `timeout_ms` takes
    # the library's defaults (reconnection, auto_connect, own loop thread).
    _fields_ = [("size", c_size_t), ("url", c_char_p), ("path", c_char_p), ("query", c_char_p),
                ("headers", c_void_p), ("nheaders", c_size_t), ("transports", c_uint),
                ("upgrade", c_int), ("websocket_first", c_int), ("proxy", c_char_p),
                ("ca_file", c_char_p), ("insecure", c_int), ("timeout_ms", c_uint32)]


class _SockOpts(Structure):
    # A prefix of parley_sock_opts, through its own user pointer.
    _fields_ = [("size", c_size_t), ("auth", _SIO_AUTH), ("on_connect", _SIO_CONNECT),
                ("on_disconnect", _SIO_DISCONNECT), ("on_connect_error", _SIO_CONNECT_ERROR),
                ("user", c_void_p)]


_fn("parley_client_new", c_int, POINTER(_ClientOpts), POINTER(c_void_p))
_fn("parley_client_free", None, c_void_p)
_fn("parley_client_socket", c_void_p, c_void_p, c_char_p, POINTER(_SockOpts))
_fn("parley_sock_on", c_int, c_void_p, c_char_p, _SIO_EVENT, c_void_p)
_fn("parley_sock_emit", c_int, c_void_p, c_char_p, c_char_p, c_void_p, c_size_t)
_fn("parley_sock_emit_ack", c_int, c_void_p, c_char_p, c_char_p, c_void_p, c_size_t, c_uint32,
    _SIO_ACK, c_void_p)
_fn("parley_sock_connected", c_int, c_void_p)
_fn("parley_sock_user", c_void_p, c_void_p)


class Socket:
    """A namespace of a Client. Handlers run on the client's loop thread."""

    def __init__(self, client, nsp, auth=None, on_connect=None, on_disconnect=None,
                 on_connect_error=None):
        self._client = client
        self._keep = []
        o = _init_opts(_SockOpts, "parley_sock_opts_init")

        def c_auth(s, u):
            # The library frees the string with parley_free: it must come
            # from parley_strdup/parley_alloc, not from Python's memory.
            v = auth()
            if v is None:
                return None
            return _owned_string(v if isinstance(v, str) else json.dumps(v))

        self._cbs = (
            _SIO_AUTH(c_auth) if auth else _SIO_AUTH(),
            _SIO_CONNECT(lambda s, rec, u: on_connect and on_connect(bool(rec))),
            _SIO_DISCONNECT(lambda s, r, u: on_disconnect and on_disconnect(r.decode())),
            _SIO_CONNECT_ERROR(lambda s, m, d, u: on_connect_error and on_connect_error(
                m.decode(), json.loads(d) if d else None)))
        o.auth, o.on_connect, o.on_disconnect, o.on_connect_error = self._cbs
        self._h = lib.parley_client_socket(client._h, _b(nsp), byref(o))
        if not self._h:
            raise ParleyError(-2, "parley_client_socket")

    @property
    def connected(self):
        return bool(lib.parley_sock_connected(self._h))

    def on(self, event, fn):
        """fn(args_list) for every `event`."""
        cb = _SIO_EVENT(lambda s, ev, args, ack_id, u: fn(_args_json(args)))
        self._keep.append(cb)
        rc = lib.parley_sock_on(self._h, _b(event), cb, None)
        if rc <= 0:
            raise ParleyError(rc or -2, "parley_sock_on")
        return rc

    def emit(self, event, *args, ack=None, timeout_ms=5000):
        """Emits; with ack, ack(err, args_list) gets the server's answer."""
        payload = _b(json.dumps(list(args)))
        if ack is None:
            _check(lib.parley_sock_emit(self._h, _b(event), payload, None, 0), "emit")
            return

        def done(s, err, a, u):
            self._keep.remove(cb)
            ack(err, _args_json(a) if err == 0 else None)

        cb = _SIO_ACK(done)
        self._keep.append(cb)
        _check(lib.parley_sock_emit_ack(self._h, _b(event), payload, None, 0, timeout_ms, cb,
                                        None), "emit_ack")


class Client:
    """A Socket.IO client on a loop thread of its own."""

    def __init__(self, url, path=None, transports=0):
        o = _init_opts(_ClientOpts, "parley_client_opts_init")
        self._keep = [_b(url), _b(path)]
        o.url = self._keep[0]
        if path:
            o.path = self._keep[1]
        if transports:
            o.transports = transports
        self._h = c_void_p()
        self._socks = []
        _check(lib.parley_client_new(byref(o), byref(self._h)), "parley_client_new")

    def socket(self, nsp="/", **kw):
        s = Socket(self, nsp, **kw)
        self._socks.append(s)
        return s

    def free(self):
        if self._h:
            lib.parley_client_free(self._h)
            self._h = None


# ---- messaging (chat.h) ----

class _ChatMessage(Structure):
    _fields_ = [("id", c_int64), ("seq", c_int64), ("ts", c_int64), ("conversation", c_char_p),
                ("from_", c_char_p), ("client_id", c_char_p), ("type", c_char_p),
                ("priority", c_char_p), ("content_json", c_void_p), ("content_len", c_size_t),
                ("text", c_char_p), ("mine", c_int)]


_CHAT_TOKEN = CFUNCTYPE(c_void_p, c_void_p, c_void_p)
_CHAT_STATE = CFUNCTYPE(None, c_void_p, c_int, c_void_p, c_void_p)
_CHAT_MESSAGE = CFUNCTYPE(None, c_void_p, POINTER(_ChatMessage), c_void_p)


class _ChatOpts(Structure):
    # A prefix of parley_chat_opts through on_message.
    _fields_ = [("size", c_size_t), ("url", c_char_p), ("path", c_char_p), ("user_id", c_char_p),
                ("token", _CHAT_TOKEN), ("dev_auth", c_int), ("queue_path", c_char_p),
                ("queue_max_count", c_size_t), ("queue_max_bytes", c_size_t),
                ("auto_delivered", c_int), ("typing_refresh_ms", c_uint32),
                ("max_tracked", c_size_t), ("max_text_bytes", c_size_t),
                ("transports", c_uint), ("websocket_first", c_int), ("ca_file", c_char_p),
                ("insecure", c_int), ("reconnection_delay_ms", c_uint32),
                ("reconnection_delay_max_ms", c_uint32), ("loop", c_void_p),
                ("auto_connect", c_int), ("on_state", _CHAT_STATE),
                ("on_message", _CHAT_MESSAGE)]


class _ChatSendOpts(Structure):
    # A prefix of parley_chat_send_opts (to, room, conversation, type, text).
    _fields_ = [("size", c_size_t), ("to", c_char_p), ("room", c_char_p),
                ("conversation", c_char_p), ("type", c_char_p), ("text", c_char_p)]


class _ChatError(Structure):
    _fields_ = [("code", ctypes.c_char * 32), ("field", ctypes.c_char * 48),
                ("message", ctypes.c_char * 160), ("retry_after_ms", c_int64)]


_fn("parley_chat_new", c_int, POINTER(_ChatOpts), POINTER(c_void_p))
_fn("parley_chat_free", None, c_void_p)
_fn("parley_chat_get_state", c_int, c_void_p)
_fn("parley_chat_send", c_int, c_void_p, POINTER(_ChatSendOpts), c_char_p, c_void_p)


class _ChatNotifyOpts(Structure):
    _fields_ = [("size", c_size_t), ("to", c_char_p), ("type", c_char_p),
                ("priority", c_char_p), ("title", c_char_p), ("body", c_char_p),
                ("image", c_char_p), ("actions_json", c_char_p), ("expires_at", c_int64),
                ("dedupe_key", c_char_p)]


class _ChatNotification(Structure):
    # A prefix of parley_chat_notification (through title).
    _fields_ = [("id", c_int64), ("type", c_char_p), ("priority", c_char_p),
                ("title", c_char_p)]


_CHAT_NOTIFY = CFUNCTYPE(None, c_void_p, c_int, POINTER(_ChatError),
                         POINTER(_ChatNotification), c_int, c_void_p)
_fn("parley_chat_notify", c_int, c_void_p, POINTER(_ChatNotifyOpts), _CHAT_NOTIFY, c_void_p)

OFFLINE, CONNECTING, SYNCING, ONLINE, REFUSED = 1, 2, 3, 4, 5


class ChatError(ParleyError):
    """The server refused a request: code and field as in docs/PROTOCOL.md."""

    def __init__(self, rc, code, field):
        super().__init__(rc, "%s %s" % (code, field))
        self.code, self.field = code, field


def _message_dict(m):
    m = m.contents
    return {"id": m.id, "seq": m.seq, "ts": m.ts, "conversation": m.conversation.decode(),
            "from": m.from_.decode(), "client_id": (m.client_id or b"").decode(),
            "type": m.type.decode(), "text": (m.text or b"").decode(), "mine": bool(m.mine)}


def _chat_opts(url, user_id, token=None, dev_auth=False, on_state=None, on_message=None,
               keep=None):
    o = _init_opts(_ChatOpts, "parley_chat_opts_init")
    keep.extend([_b(url), _b(user_id)])
    o.url, o.user_id = keep[-2], keep[-1]
    o.dev_auth = int(dev_auth)
    # token: a string, or a function returning one (asked on every
    # connection, so that it can be refreshed).
    get = token if callable(token) else (lambda: token)
    cbs = (_CHAT_TOKEN(lambda c, u: _owned_string(get())) if token else _CHAT_TOKEN(),
           _CHAT_STATE(lambda c, st, why, u: on_state and on_state(st)),
           _CHAT_MESSAGE(lambda c, m, u: on_message and on_message(_message_dict(m))))
    keep.extend(cbs)
    o.token, o.on_state, o.on_message = cbs
    return o


def _send_opts(to, text, keep):
    o = _init_opts(_ChatSendOpts, "parley_chat_send_opts_init")
    keep.extend([_b(to), _b(text)])
    o.to, o.text = keep[-2], keep[-1]
    return o


class Chat:
    """Messaging on /chat, on a loop thread of its own. on_state(state),
    on_message(dict) run on that thread."""

    def __init__(self, url, user_id, token=None, dev_auth=False, on_state=None, on_message=None):
        self._keep = []
        o = _chat_opts(url, user_id, token, dev_auth, on_state, on_message, self._keep)
        self._h = c_void_p()
        _check(lib.parley_chat_new(byref(o), byref(self._h)), "parley_chat_new")

    @property
    def state(self):
        return lib.parley_chat_get_state(self._h)

    def send(self, to, text):
        """Sends a text message to a user; returns its client id."""
        keep = []
        o = _send_opts(to, text, keep)
        cid = ctypes.create_string_buffer(37)
        err = _ChatError()
        rc = lib.parley_chat_send(self._h, byref(o), cid, byref(err))
        if rc:
            raise ParleyError(rc, "parley_chat_send " + err.code.decode())
        return cid.value.decode()

    def notify(self, to, type, title, body=None, priority=None, dedupe_key=None,
               timeout=10.0):
        """Sends a notification (a token with the notifier or admin role)
        and waits for the server's answer: {"id", "type", "priority",
        "title", "duplicate"}; ChatError with the server's code and field."""
        keep = []
        o = _init_opts(_ChatNotifyOpts, "parley_chat_notify_opts_init")
        for name, v in (("to", to), ("type", type), ("title", title), ("body", body),
                        ("priority", priority), ("dedupe_key", dedupe_key)):
            if v is not None:
                keep.append(_b(v))
                setattr(o, name, keep[-1])
        done = threading.Event()
        out = {}

        def answered(c, err, e, n, dup, u):
            if err == 0:
                n = n.contents
                out["ok"] = {"id": n.id, "type": n.type.decode(),
                             "priority": n.priority.decode(), "title": n.title.decode(),
                             "duplicate": bool(dup)}
            else:
                e = e.contents if e else None
                out["err"] = (err, e.code.decode() if e else "", e.field.decode() if e else "")
            done.set()

        cb = _CHAT_NOTIFY(answered)
        _check(lib.parley_chat_notify(self._h, byref(o), cb, None), "parley_chat_notify")
        if not done.wait(timeout):
            self._keep.append(cb)  # the answer may still come: keep its callback alive
            raise ParleyError(-110, "parley_chat_notify: no answer")
        if "err" in out:
            raise ChatError(*out["err"])
        return out["ok"]

    def free(self):
        if self._h:
            lib.parley_chat_free(self._h)
            self._h = None


# ---- the store (store.h) ----

_STORE_FN = CFUNCTYPE(None, c_void_p, c_char_p, c_void_p, c_size_t, c_void_p)


class _StoreOpts(Structure):
    _fields_ = [("size", c_size_t), ("chat", POINTER(_ChatOpts)), ("max_messages", c_size_t),
                ("dispatch_fd", c_int)]


_fn("parley_store_new", c_int, POINTER(_StoreOpts), POINTER(c_void_p))
_fn("parley_store_free", None, c_void_p)
_fn("parley_store_watch", c_int64, c_void_p, c_char_p, _STORE_FN, c_void_p)
_fn("parley_store_unwatch", c_int, c_void_p, c_int64)
_fn("parley_store_get", c_void_p, c_void_p, c_char_p, POINTER(c_size_t))
_fn("parley_store_fd", c_int, c_void_p)
_fn("parley_store_dispatch", c_int, c_void_p)
_fn("parley_store_send", c_int, c_void_p, POINTER(_ChatSendOpts), c_char_p, c_void_p)


class Store:
    """The client-side state (store.h) in dispatch_fd mode: watchers run on
    the thread that calls dispatch() when fd() polls readable (Python's own
    thread, e.g. from a selector), never on the library's loop thread."""

    def __init__(self, url, user_id, token=None, dev_auth=False):
        self._keep = []
        co = _chat_opts(url, user_id, token, dev_auth, None, None, self._keep)
        o = _init_opts(_StoreOpts, "parley_store_opts_init")
        o.chat = ctypes.pointer(co)
        o.dispatch_fd = 1
        self._h = c_void_p()
        self._watchers = {}
        _check(lib.parley_store_new(byref(o), byref(self._h)), "parley_store_new")

    def fd(self):
        return lib.parley_store_fd(self._h)

    def dispatch(self):
        """Runs pending watcher calls on this thread."""
        return lib.parley_store_dispatch(self._h)

    def watch(self, key, fn):
        """fn(key, value) with the current value soon, then on changes."""
        cb = _STORE_FN(lambda s, k, j, n, u: fn(k.decode(), json.loads(ctypes.string_at(j, n))))
        wid = lib.parley_store_watch(self._h, _b(key), cb, None)
        if wid <= 0:
            raise ParleyError(int(wid) or -2, "parley_store_watch")
        self._watchers[wid] = cb
        return wid

    def unwatch(self, wid):
        _check(lib.parley_store_unwatch(self._h, wid), "parley_store_unwatch")
        self._watchers.pop(wid, None)

    def get(self, key):
        """The current value (the library's string, released with parley_free)."""
        n = c_size_t()
        p = lib.parley_store_get(self._h, _b(key), byref(n))
        if not p:
            raise ParleyError(-2, "parley_store_get")
        try:
            return json.loads(ctypes.string_at(p, n.value))
        finally:
            lib.parley_free(p)

    def send(self, to, text):
        keep = []
        o = _send_opts(to, text, keep)
        cid = ctypes.create_string_buffer(37)
        _check(lib.parley_store_send(self._h, byref(o), cid, None), "parley_store_send")
        return cid.value.decode()

    def free(self):
        if self._h:
            lib.parley_store_free(self._h)
            self._h = None
