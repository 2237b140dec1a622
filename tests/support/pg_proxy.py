"""A socket proxy between one CA node and PostgreSQL, to cut that node's network to the
database in a test (issue 13: "leader loss (kill -9, network drop to the database)").

The test PostgreSQL listens on a Unix socket only (common.pgdev), so the proxy is a Unix
socket too: `<folder>/.s.PGSQL.<port>`, reached with `host=<folder>` in the node's DSN.
- `drop()`: a silent network loss. Nothing is forwarded any more and nothing is closed (no
  FIN, no RST): bytes vanish both ways, and new connections are accepted and left unanswered.
  Each side finds out by its own timeouts, as after a pulled cable.
- `restore()`: the network is back. The connections that lived through the drop are closed
  (their bytes were lost: their sessions are unusable) and new ones are forwarded again.
Everything runs on an event loop in a daemon thread; `close()` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path


class SocketProxy:
    """Forwards `<folder>/.s.PGSQL.<port>` to PostgreSQL's socket `target` until dropped."""

    def __init__(self, target: Path, folder: Path, port: int = 5432) -> None:
        self.target = target
        self.folder = folder
        self.path = folder / f".s.PGSQL.{port}"
        self.forwarding = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> SocketProxy:
        """Listen (the folder is created 0700)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._thread.start()
        self._run(self._listen())
        return self

    def _run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if not self.forwarding:  # a dead network: the connection hangs, unanswered
            await self._swallow(reader)
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
        for end in (writer, up_writer):
            end.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while await reader.read(65536):
                pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.forwarding:  # dropped: the bytes vanish, the sockets stay open
                    writer.write(data)
                    await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            # A close on one side crosses only a working network; while dropped the other
            # side never hears of it (its sockets stay until restore() or close()).
            if self.forwarding:
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()

    def drop(self) -> None:
        """Cut the network silently (module docstring)."""
        self.forwarding = False

    def restore(self) -> None:
        """The network is back: close what lived through the drop, forward new ones."""

        async def reset() -> None:
            for writer in list(self._writers):
                writer.close()
            self._writers.clear()
            self.forwarding = True

        self._run(reset())

    def close(self) -> None:
        """Stop listening and close every connection."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
