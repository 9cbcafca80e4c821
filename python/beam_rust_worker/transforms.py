"""Cross-language transforms served by beam-rust-worker."""

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms.external import ExternalTransform

#: URN of the KV echo stage; it must match the worker's expansion service.
KV_ECHO_URN = "beam:transform:rust_worker:kv_echo:v1"

#: Where ``beam-rust-worker --expansion-port 8096`` listens by default.
DEFAULT_EXPANSION_SERVICE = "localhost:8096"


def _is_bytes_coder(coder):
    if isinstance(coder, coders.BytesCoder):
        return True
    if isinstance(coder, coders.NullableCoder):
        return isinstance(coder._value_coder, coders.BytesCoder)
    return False


def _check_kv_of_bytes(pcoll):
    """Fails early, with a Python-side hint, when the input's coder is not one
    the worker can carry (the expansion service would refuse it anyway)."""
    coder = coders.registry.get_coder(pcoll.element_type)
    parts = coder._coders if isinstance(coder, coders.TupleCoder) else ()
    if len(parts) == 2 and all(_is_bytes_coder(c) for c in parts):
        return
    raise TypeError(
        "KvEcho needs a PCollection of (bytes, bytes) pairs encoded with a KV "
        "coder, but %r has element type %s, which Beam encodes with %s. Declare "
        "the producing transform's type, e.g. "
        "`.with_output_types(beam.typehints.Tuple[bytes, bytes])` (keys may be "
        "typing.Optional[bytes]); note that a plain typing.Tuple hint gives a "
        "pickled coder." % (pcoll, pcoll.element_type, coder))


class KvEcho(beam.PTransform):
    """Echoes ``(key, value)`` byte pairs through the Rust worker pool.

    Every element comes out unchanged, with its timestamp, windows and pane, and
    the output keeps the input's coder. The input must be a PCollection of
    ``(bytes, bytes)`` tuples with a KV coder: type its producer with
    ``beam.typehints.Tuple[bytes, bytes]`` (keys and values may be
    ``typing.Optional[bytes]``, which Beam encodes as nullable).

    This is a cross-language transform. Before constructing the pipeline, start
    the worker with its expansion service enabled::

        beam-rust-worker --port 50000 --expansion-port 8096 \\
            --advertise localhost:50000

    The expansion binds this stage to an external environment at the
    ``--advertise`` address; the rest of the pipeline keeps its own environment.
    """

    def __init__(self, expansion_service=DEFAULT_EXPANSION_SERVICE):
        """Initializes the transform.

        :param expansion_service: The address (host:port) of the worker's
            ExpansionService, i.e. ``localhost:<--expansion-port>``.
        """
        super().__init__()
        self._expansion_service = expansion_service

    def expand(self, pcoll):
        _check_kv_of_bytes(pcoll)
        return pcoll | ExternalTransform(KV_ECHO_URN, None, self._expansion_service)

    def default_label(self):
        return "KvEcho"
