"""Kafka read and write executed natively by the beam-rust-worker pool.

Drop-in replacements for ``apache_beam.io.kafka.ReadFromKafka`` and
``WriteToKafka`` for byte-array keys and values: the same arguments, but no
Java expansion service, no Java SDK harness and no Docker. A pipeline
``ReadFromKafka -> KvEcho -> WriteToKafka`` runs as one fused stage inside the
Rust worker; records never travel back to the runner between the steps.

Delivery is at-least-once: the write completes a bundle only after the broker
acknowledged every record, and the read commits its consumer group's offsets
(with ``commit_offset_in_finalize=True``) only when the runner finalizes the
bundle, i.e. after its output was taken. A failure before that re-reads the
uncommitted records on the next run.

Like ``apache_beam.io.kafka.ReadFromKafka``, the read is *unbounded* (a
streaming read that waits for new records for as long as the job runs) unless
``max_num_records`` or ``max_read_time`` is given, or ``stop_at_end=True``
(read to the end of each partition as the read gets there, then stop), which
make it bounded. The unbounded read is a splittable DoFn: one element per
partition, each read for about a second per bundle and handed back to the
runner with the next offset and the watermark (processing time).
"""

import typing

import apache_beam as beam
from apache_beam.transforms.external import ExternalTransform
from apache_beam.transforms.external import NamedTupleBasedPayloadBuilder

from beam_rust_worker.transforms import DEFAULT_EXPANSION_SERVICE

#: URNs served by the worker's expansion service.
KAFKA_READ_URN = "beam:transform:rust_worker:kafka_read:v1"
KAFKA_WRITE_URN = "beam:transform:rust_worker:kafka_write:v1"

_BYTE_ARRAY_DESERIALIZER = (
    "org.apache.kafka.common.serialization.ByteArrayDeserializer")
_BYTE_ARRAY_SERIALIZER = (
    "org.apache.kafka.common.serialization.ByteArraySerializer")

KafkaRecord = beam.typehints.Tuple[typing.Optional[bytes],
                                   typing.Optional[bytes]]


class _ReadConfig(typing.NamedTuple):
    consumer_config: typing.Mapping[str, str]
    topics: typing.List[str]
    max_num_records: typing.Optional[int]
    max_read_time: typing.Optional[int]
    commit_offset_in_finalize: bool
    stop_at_end: bool
    timestamp_policy: str


_TIMESTAMP_POLICIES = ("ProcessingTime", "LogAppendTime", "CreateTime")


class _WriteConfig(typing.NamedTuple):
    producer_config: typing.Mapping[str, str]
    topic: str


def _unsupported(transform, **given):
    """Raises for arguments of apache_beam.io.kafka this worker does not
    implement, naming each one, instead of silently ignoring it."""
    bad = ["%s=%r" % (k, v) for k, v in given.items() if v]
    if bad:
        raise ValueError(
            "beam_rust_worker.%s does not support %s. It reads and writes raw "
            "byte keys and values (ByteArray(De)Serializer), with no metadata, "
            "headers or redistribution." %
            (transform, ", ".join(bad)))


class ReadFromKafka(beam.PTransform):
    """A read of Kafka topics as ``(key, value)`` byte pairs: unbounded
    (streaming) by default, bounded with ``max_num_records``,
    ``max_read_time`` or ``stop_at_end``.

    Keys and values are ``Optional[bytes]``: a record without a key (or a
    tombstone without a value) yields ``None``, like Java's KafkaIO with
    ``ByteArrayDeserializer``. Timestamps follow ``timestamp_policy``
    (``ProcessingTime``, the default; ``CreateTime``; ``LogAppendTime``), in the global
    window.

    :param consumer_config: librdkafka consumer properties; ``bootstrap.servers``
        is required, ``group.id`` is needed to resume from committed offsets,
        and ``auto.offset.reset`` (``earliest``/``latest``) says where a group
        without committed offsets starts.
    :param topics: the topics to read, all partitions of each.
    :param max_num_records: stop after this many records.
    :param max_read_time: stop after this many seconds.
    :param stop_at_end: stop at the end of each partition (a bounded read of
        what is there; beam-rust-worker's own option).
    :param commit_offset_in_finalize: commit the group's offsets once the
        runner finalizes the bundle (at-least-once).
    :param expansion_service: ``host:port`` of beam-rust-worker's expansion
        service.
    """

    def __init__(
        self,
        consumer_config,
        topics,
        key_deserializer=_BYTE_ARRAY_DESERIALIZER,
        value_deserializer=_BYTE_ARRAY_DESERIALIZER,
        start_read_time=None,
        max_num_records=None,
        max_read_time=None,
        commit_offset_in_finalize=False,
        timestamp_policy="ProcessingTime",
        consumer_polling_timeout=2,
        with_metadata=False,
        expansion_service=None,
        redistribute=False,
        redistribute_num_keys=0,
        allow_duplicates=False,
        dynamic_read_poll_interval_seconds=None,
        consumer_factory_fn_class=None,
        consumer_factory_fn_params=None,
        stop_at_end=False):
        super().__init__()
        _unsupported(
            "ReadFromKafka",
            key_deserializer=key_deserializer != _BYTE_ARRAY_DESERIALIZER and
            key_deserializer,
            value_deserializer=value_deserializer != _BYTE_ARRAY_DESERIALIZER and
            value_deserializer,
            start_read_time=start_read_time,
            with_metadata=with_metadata,
            redistribute=redistribute,
            redistribute_num_keys=redistribute_num_keys,
            allow_duplicates=allow_duplicates,
            dynamic_read_poll_interval_seconds=dynamic_read_poll_interval_seconds,
            consumer_factory_fn_class=consumer_factory_fn_class,
            consumer_factory_fn_params=consumer_factory_fn_params)
        if timestamp_policy not in _TIMESTAMP_POLICIES:
            raise ValueError(
                "beam_rust_worker.ReadFromKafka does not support timestamp_policy=%r; "
                "it takes one of %s" % (timestamp_policy, ", ".join(_TIMESTAMP_POLICIES)))
        # consumer_polling_timeout tunes Java's poll loop; librdkafka needs none.
        del consumer_polling_timeout
        if isinstance(topics, str):
            topics = [topics]
        self._config = _ReadConfig(
            consumer_config=dict(consumer_config),
            topics=list(topics),
            max_num_records=max_num_records,
            max_read_time=max_read_time,
            commit_offset_in_finalize=bool(commit_offset_in_finalize),
            stop_at_end=bool(stop_at_end),
            timestamp_policy=timestamp_policy)
        self._expansion_service = expansion_service or DEFAULT_EXPANSION_SERVICE

    def expand(self, pbegin):
        return pbegin | ExternalTransform(
            KAFKA_READ_URN,
            NamedTupleBasedPayloadBuilder(self._config),
            self._expansion_service).with_output_types(KafkaRecord)

    def default_label(self):
        return "ReadFromKafka(%s)" % ",".join(self._config.topics)


class WriteToKafka(beam.PTransform):
    """Writes ``(key, value)`` byte pairs to a Kafka topic; a ``None`` key
    writes a record without a key.

    A bundle completes only after the broker acknowledged all of its records;
    a delivery failure fails the bundle with the broker's reason.

    :param producer_config: librdkafka producer properties;
        ``bootstrap.servers`` is required.
    :param topic: the topic to write to (it must exist).
    :param expansion_service: ``host:port`` of beam-rust-worker's expansion
        service.
    """

    def __init__(
        self,
        producer_config,
        topic,
        key_serializer=_BYTE_ARRAY_SERIALIZER,
        value_serializer=_BYTE_ARRAY_SERIALIZER,
        with_headers=False,
        expansion_service=None):
        super().__init__()
        _unsupported(
            "WriteToKafka",
            key_serializer=key_serializer != _BYTE_ARRAY_SERIALIZER and
            key_serializer,
            value_serializer=value_serializer != _BYTE_ARRAY_SERIALIZER and
            value_serializer,
            with_headers=with_headers)
        self._config = _WriteConfig(
            producer_config=dict(producer_config), topic=topic)
        self._expansion_service = expansion_service or DEFAULT_EXPANSION_SERVICE

    def expand(self, pcoll):
        return pcoll | ExternalTransform(
            KAFKA_WRITE_URN,
            NamedTupleBasedPayloadBuilder(self._config),
            self._expansion_service)

    def default_label(self):
        return "WriteToKafka(%s)" % self._config.topic
