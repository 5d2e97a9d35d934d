"""The app's own temporary folder (trace downloads, PNGs): unique names, old files pruned, removed at exit."""
from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path


class TempFolder:
    def __init__(self, prefix: str, max_age_s: float, max_files: int):
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.max_age_s, self.max_files = max_age_s, max_files
        self._lock = threading.Lock()
        atexit.register(self.remove)

    def path(self, stem: str, suffix: str) -> Path:
        """A fresh file name (the stem reduced to safe characters); prunes old files first."""
        self.prune()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
        return self.root / f"{safe}_{uuid.uuid4().hex[:8]}{suffix}"

    def folder(self, stem: str) -> Path:
        """A fresh sub-folder (pruned like the files)."""
        path = self.path(stem, "")
        path.mkdir()
        return path

    def prune(self) -> None:
        """Drops entries older than max_age_s, and the oldest beyond max_files."""
        with self._lock:
            entries = sorted(self.root.iterdir(), key=lambda p: p.stat().st_mtime)
            now = time.time()
            for i, p in enumerate(entries):
                if len(entries) - i > self.max_files or now - p.stat().st_mtime > self.max_age_s:
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
