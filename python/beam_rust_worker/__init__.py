"""Beam transforms executed by the beam-rust-worker pool.

The transforms here are cross-language transforms: at pipeline construction
the SDK asks the worker's expansion service (``--expansion-port``) to expand
them, and the expansion binds them to an external environment pointing at the
worker pool, so only these stages run in Rust.
"""

from beam_rust_worker.transforms import DEFAULT_EXPANSION_SERVICE
from beam_rust_worker.transforms import KV_ECHO_URN
from beam_rust_worker.transforms import KvEcho

__all__ = ["DEFAULT_EXPANSION_SERVICE", "KV_ECHO_URN", "KvEcho"]
