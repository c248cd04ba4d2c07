"""Exceptions the CLI and the app turn into one clear line: each says what to do next."""


class EmbedDogsError(Exception):
    """Base class for every expected failure; its message is shown to the user as is."""


class UnknownBackboneError(EmbedDogsError):
    pass


class WeightsUnavailableError(EmbedDogsError):
    pass


class SourceError(EmbedDogsError):
    pass


class BundleError(EmbedDogsError):
    pass


class IncompatibleBundleError(BundleError):
    pass


class BundleNotWritableError(BundleError):
    """The bundle can be read but not changed here (a read-only folder, a mount point)."""


class EngineError(EmbedDogsError):
    """The embedding engine cannot run: Ray not installed, or no cluster at the address."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line for a message: its first line, or its type's name."""
    text = str(exc)
    return text.splitlines()[0][:limit] if text.strip() else type(exc).__name__
