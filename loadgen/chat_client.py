"""`muxbench chat`: an interactive client for the chat servers, and the textbook's.

One readiness loop watches the keyboard and the socket, as the seed's
tcp_chatcli.c does with select(): a typed line goes out as `[NAME] : text`, and
whatever the server sends is printed as it arrives -- including our own lines,
which every chat server here (and the textbook's) sends back to their sender.
Unlike that client, this one notices when the server goes away (recv() == 0)
instead of spinning on it, and leaves by half-closing, so that lines already in
flight still arrive.  In a terminal, GNU readline edits the line being typed
and incoming lines are printed above it without garbling it; otherwise stdin
and stdout are plain byte streams, for scripting.
"""

from __future__ import annotations

import argparse
import ctypes
import getpass
import os
import select
import socket
import sys
import time

from muxbench.argtypes import number_in
from muxbench.net import RECV_SIZE

# How long to keep printing after we half-closed, waiting for the server to close.
DRAIN_SECONDS = 3.0
# Stop reading stdin while this much is unsent: a piped flood must not grow us
# without bound when the server reads slower than we are fed.
MAX_UNSENT = 1 << 20
QUIT = b"/quit"


class Unreachable(Exception):
    """No connection could be made (bad host, nothing listening); a one-line reason."""


class ServerGone(Exception):
    """The server closed or reset the connection before we left."""


def _name(text: str) -> str:
    if not text or not text.isprintable():
        raise argparse.ArgumentTypeError(f"must be non-empty printable text, got {text!r}")
    return text


def _default_name() -> str:
    try:
        return getpass.getuser() or "guest"
    except (KeyError, OSError):  # no login name and no passwd entry
        return "guest"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Chat with a `muxbench serve MODEL --protocol chat` server (or the textbook's C one). "
        "Typed lines go out as `[NAME] : text`; received lines are printed as they arrive. "
        "Leave with /quit or end of input (Ctrl-D): exit 0 after the server's last lines. "
        "Exit 1 when the server goes away, 2 when it cannot be reached."
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    parser.add_argument("--port", type=number_in(int, 1, 65535), required=True,
                        help="server port (required)")
    parser.add_argument("--name", type=_name, default=_default_name(),
                        help="name put before each line (default: your user name, or guest)")


def connect(host: str, port: int) -> socket.socket:
    """A connected, non-blocking socket, or Unreachable."""
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except socket.gaierror as exc:
        raise Unreachable(f"cannot resolve host {host!r}: {exc.strerror}") from None
    except OSError as exc:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise Unreachable(f"cannot connect to {shown}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class PlainConsole:
    """stdin and stdout as byte streams: what a pipe or a file gives."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self._partial = b""

    def read(self) -> list[bytes | None]:
        """The complete lines now readable; None stands for end of input."""
        data = os.read(self.fd, RECV_SIZE)
        if not data:
            # A last line without its newline is still a line the user wrote.
            tail, self._partial = self._partial, b""
            return [tail, None] if tail else [None]
        *lines, self._partial = (self._partial + data).split(b"\n")
        return lines

    def show(self, lines: bytes) -> None:
        sys.stdout.buffer.write(lines)
        sys.stdout.buffer.flush()

    def close(self) -> None:
        pass


# Control characters from the network must not drive the terminal (escape
# sequences could rewrite the screen); show them as U+FFFD instead.
_UNPRINTABLE = {c: "\ufffd" for c in [*range(32), *range(127, 160)] if c not in (9, 10)}


class ReadlineConsole:
    """GNU readline's callback interface, fed one key at a time by our loop.

    Python's `readline` module only offers a blocking readline(), which would
    stall the socket; its library also has the callback interface
    (rl_callback_handler_install / rl_callback_read_char), reached with ctypes.
    """

    _HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    def __init__(self, lib: ctypes.CDLL, prompt: str) -> None:
        import readline

        self.fd = sys.stdin.fileno()
        self._readline = readline
        self._lib = lib
        self._libc = ctypes.CDLL(None)
        lib.rl_copy_text.restype = ctypes.c_void_p
        lib.rl_replace_line.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._point = ctypes.c_int.in_dll(lib, "rl_point")
        self._end = ctypes.c_int.in_dll(lib, "rl_end")
        self._lines: list[bytes | None] = []
        self._handler = self._HANDLER(self._on_line)  # kept alive: readline holds it
        readline.parse_and_bind("tab: tab-insert")  # no completion in a chat line
        lib.rl_callback_handler_install(prompt.encode(), self._handler)
        self._installed = True

    def _on_line(self, line: int | None) -> None:
        # Called from inside rl_callback_read_char: only record, never raise.
        if line is None:
            self._lines.append(None)
            self._remove()  # no new prompt after end of input
            return
        text = ctypes.string_at(line)
        self._libc.free(ctypes.c_void_p(line))
        if text.strip() == QUIT:
            self._remove()
        elif text:
            self._readline.add_history(text.decode(errors="replace"))
        self._lines.append(text)

    def read(self) -> list[bytes | None]:
        self._lib.rl_callback_read_char()
        lines, self._lines = self._lines, []
        return lines

    def show(self, lines: bytes) -> None:
        """Print above the line being typed, then put that line back as it was."""
        text = lines.decode(errors="replace").replace("\r\n", "\n").translate(_UNPRINTABLE)
        if not self._installed:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        lib = self._lib
        point = self._point.value
        saved = lib.rl_copy_text(0, self._end.value)
        lib.rl_save_prompt()
        lib.rl_replace_line(b"", 0)
        lib.rl_redisplay()
        # The erased prompt leaves the cursor at its line's start, ready to print.
        sys.stdout.write("\r\x1b[K" + text)
        sys.stdout.flush()
        lib.rl_restore_prompt()
        lib.rl_replace_line(ctypes.c_char_p(saved), 0)
        self._libc.free(ctypes.c_void_p(saved))
        self._point.value = point
        lib.rl_forced_update_display()

    def _remove(self) -> None:
        if self._installed:
            self._installed = False
            self._lib.rl_callback_handler_remove()

    def close(self) -> None:
        if self._installed:
            self._remove()
            sys.stdout.write("\n")  # leave the shell's prompt on a line of its own
            sys.stdout.flush()


def _readline_library() -> ctypes.CDLL | None:
    """The GNU readline that Python's readline module uses, or None (libedit, none)."""
    try:
        import readline
    except ImportError:
        return None
    if "libedit" in (readline.__doc__ or ""):
        return None  # the BSD emulation: only GNU readline is relied on here
    lib = ctypes.CDLL(readline.__file__)  # its symbols include the linked libreadline
    return lib if hasattr(lib, "rl_callback_handler_install") else None


def open_console(name: str) -> PlainConsole | ReadlineConsole:
    if sys.stdin.isatty() and sys.stdout.isatty():
        lib = _readline_library()
        if lib is not None:
            return ReadlineConsole(lib, f"{name}> ")
    return PlainConsole()


class Session:
    """The readiness loop: keyboard -> server, server -> screen, until someone leaves."""

    def __init__(self, sock: socket.socket, console: PlainConsole | ReadlineConsole,
                 name: str) -> None:
        self.sock = sock
        self.console = console
        self.prefix = b"[" + name.encode() + b"] : "
        self.unsent = bytearray()
        self.received = b""  # an incomplete line, held until its newline arrives
        self.leaving = False  # /quit or end of input seen
        self.half_closed = False

    def run(self) -> int:
        sock, console = self.sock, self.console
        deadline = None
        while True:
            readers = [sock]
            if not self.leaving and len(self.unsent) < MAX_UNSENT:
                readers.append(console.fd)
            writers = [sock] if self.unsent else []
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, writable, _ = select.select(readers, writers, [], timeout)
            if not readable and not writable:
                print(f"muxbench chat: the server did not close within {DRAIN_SECONDS:g} s "
                      "after we left; not waiting longer", file=sys.stderr)
                return 0
            if writable:
                self._flush()
            if console.fd in readable:
                for line in console.read():
                    self._typed(line)
            if sock in readable and not self._receive():
                return 0
            if self.leaving and not self.unsent and not self.half_closed:
                # Half-close: the server sees our end of input, yet still
                # sends what it has for us, then closes.
                sock.shutdown(socket.SHUT_WR)
                self.half_closed = True
                deadline = time.monotonic() + DRAIN_SECONDS

    def _typed(self, line: bytes | None) -> None:
        if line is None or line.strip() == QUIT:
            self.leaving = True
            return
        line = line.rstrip(b"\r")
        if line and not self.leaving:
            self.unsent += self.prefix + line + b"\n"
            self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.unsent)
        except BlockingIOError:
            return
        except OSError as exc:  # EPIPE, ECONNRESET: the server is gone
            raise ServerGone(f"server closed the connection ({exc.strerror})") from None
        del self.unsent[:sent]

    def _receive(self) -> bool:
        """Show what arrived; False once the server closed after we left."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return True
        except OSError as exc:
            raise ServerGone(f"connection to the server lost ({exc.strerror})") from None
        if not data:
            if self.received:
                self.console.show(self.received + b"\n")
                self.received = b""
            if not self.half_closed:
                raise ServerGone("server closed the connection")
            return False
        cut = data.rfind(b"\n") + 1
        if cut:
            self.console.show(self.received + data[:cut])
            self.received = data[cut:]
        else:
            self.received += data
        return True


def run(args: argparse.Namespace) -> int:
    try:
        sock = connect(args.host, args.port)
    except Unreachable as exc:
        print(f"muxbench chat: {exc}", file=sys.stderr)
        return 2
    console = open_console(args.name)
    try:
        try:
            return Session(sock, console, args.name).run()
        finally:
            console.close()
    except ServerGone as exc:
        print(f"muxbench chat: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Our reader went away (`muxbench chat ... | head`): nothing left to show.
        return 1
    finally:
        sock.close()
