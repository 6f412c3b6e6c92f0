"""The exception tree of gossipflow.

    GossipflowError                 base of everything we raise on purpose
    ├── ConfigError                 a tunable or flag out of its allowed range
    ├── WireError                   bytes that are not a valid message
    │   ├── AuthError               missing, unexpected or wrong BLAKE2b tag
    │   └── DecodeError             not msgpack, unknown type, wrong fields
    ├── TransportError              a socket could not be bound or used
    ├── RegistryError               a flow registry request that cannot be done
    │   ├── FlowExistsError         another text already runs under that name
    │   ├── UnknownFlowError        no flow of that name
    │   └── ForgetError             a member that cannot be forgotten (alive, or the asked one)
    ├── ClientError                 a client request that failed
    │   ├── NodeUnreachableError    no answer from the daemon in time
    │   └── RequestRefusedError     the daemon answered with an error
    ├── NotVotingError              a member that lost its votes has not recovered them yet
    └── StoreError                  the LMDB store cannot be opened, read or written
        ├── StoreFullError          disk or map full: the commit was aborted, the store is intact
        ├── InvalidCommitError      a malformed commit (reused outbox sequence, bad id or key)
        └── StaleCommitError        a commit out of order for its task; nothing was written
            ├── CommitGapError      its number skips past last + 1: catch up first
            └── StaleEpochError     its epoch is below what the task promised or saw

Errors from pyzmq, msgpack and lmdb are translated into these at the boundary
(``raise ... from err``), so callers catch ours only.
"""


class GossipflowError(Exception):
    """Base of every error gossipflow raises on purpose."""


class ConfigError(GossipflowError, ValueError):
    """A tunable or command-line flag is out of its allowed range."""


class WireError(GossipflowError):
    """Bytes from the network that are not a valid message."""


class AuthError(WireError):
    """A packet's BLAKE2b tag is missing, unexpected or wrong."""


class DecodeError(WireError):
    """A packet that does not decode: not msgpack, unknown type, wrong fields."""


class TransportError(GossipflowError):
    """A socket could not be bound or used."""


class RegistryError(GossipflowError):
    """A flow registry request that cannot be done."""


class FlowExistsError(RegistryError):
    """Another text already runs under that flow name."""


class UnknownFlowError(RegistryError):
    """No flow of that name."""


class ForgetError(RegistryError):
    """A member that cannot be forgotten: it is alive, or it is the member asked."""


class ClientError(GossipflowError):
    """A client request failed."""


class NodeUnreachableError(ClientError):
    """The daemon did not answer in time."""


class RequestRefusedError(ClientError):
    """The daemon answered with an error."""


class NotVotingError(GossipflowError):
    """A member that lost its store (its promises and accepted replica sets) refuses to
    promise or accept for a flow until it has recovered them from the other voters."""


class StoreError(GossipflowError):
    """The LMDB store cannot be opened, read or written (the message names the path)."""


class StoreFullError(StoreError):
    """The disk or the LMDB map is full; the commit was aborted and the store is intact."""


class InvalidCommitError(StoreError, ValueError):
    """A malformed commit: reused outbox sequence, NUL in an id, key too long, wrong types."""


class StaleCommitError(StoreError):
    """A commit out of order for its task; nothing was written."""


class CommitGapError(StaleCommitError):
    """A commit whose number skips past the task's last commit + 1: catch up first."""


class StaleEpochError(StaleCommitError):
    """A commit from an epoch below the task's promise or last epoch: a newer primary exists."""
