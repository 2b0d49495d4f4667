"""What ``seal`` leaves out of a package: files that should never ship.

A vendor's app directory is often a working copy: its ``.git`` history,
byte-code caches and ``.env`` files of credentials sit next to the code. A
package is opened only inside an approved enclave, but what it holds is
then the app's for as long as it runs, and shipping a developer's secrets to
every host's enclave (or a stale ``.pyc`` that shadows the source) is never
wanted. So :func:`seal` skips, by default:

- ``.git/``, ``__pycache__/``, ``*.pyc``, ``.env`` and ``.env.*``;
- what ``APP_DIR/.strongroomignore`` lists, in gitignore syntax (matched by
  the ``pathspec`` library's :class:`~pathspec.GitIgnoreSpec`, as git does:
  ``/`` anchors, ``dir/`` matches directories, ``**`` any depth). Its lines
  come after the defaults, so ``!.env.example`` ships a file the defaults
  would skip.

As with git, nothing below a skipped directory can be brought back. The
skipped entries are reported (the top-most of each: ``.git/``, not every
object in it), and the manifest's entries must not be among them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from strongroom.errors import InvalidInputError

IGNORE_FILE = ".strongroomignore"
#: Never shipped unless the ignore file says otherwise (``!pattern``).
DEFAULT_PATTERNS = (".git/", "__pycache__/", "*.pyc", ".env", ".env.*")
#: An ignore file is a short list of patterns, not data.
MAX_IGNORE_FILE = 64 * 1024


@dataclass
class IgnoreRules:
    """Which entries of an app directory stay out of its package, and which did."""

    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    #: Filled while sealing: the skipped names, directories ending with ``/``.
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import pathspec  # on use: only `seal` needs it

        self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)

    @classmethod
    def for_app(cls, app_dir: Path) -> IgnoreRules:
        """The defaults, then ``app_dir/.strongroomignore`` if there is one."""
        path = app_dir / IGNORE_FILE
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_IGNORE_FILE + 1)
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc
        if len(raw) > MAX_IGNORE_FILE:
            raise InvalidInputError(
                f"{path} is larger than {MAX_IGNORE_FILE} bytes",
                hint="list patterns (gitignore syntax), not files one by one",
            )
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise InvalidInputError(f"{path} is not UTF-8 text") from None
        return cls((*DEFAULT_PATTERNS, *lines))

    def ignores(self, name: str, *, directory: bool) -> bool:
        """Whether the entry ``name`` (relative, ``/``-separated) stays out; records it if so."""
        if self._spec.match_file(f"{name}/" if directory else name):
            self.skipped.append(f"{name}/" if directory else name)
            return True
        return False

    def check_kept(self, entries: Sequence[str]) -> None:
        """Refuse to seal a manifest whose entries would not be in the package."""
        for entry in entries:
            parts = entry.split("/")
            for depth in range(1, len(parts) + 1):
                prefix = "/".join(parts[:depth])
                directory = depth < len(parts)
                if self._spec.match_file(f"{prefix}/" if directory else prefix):
                    raise InvalidInputError(
                        f"the manifest's entry {entry!r} would not be sealed: "
                        f"{prefix}{'/' if directory else ''} is skipped",
                        hint=f"un-ignore it in {IGNORE_FILE} (a line `!{prefix}`), or rename it",
                    )
