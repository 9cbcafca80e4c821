"""Kafka -> echo -> Kafka, the seed's pipeline, with every step native.

Reads keyed records from one topic, echoes them through KvEcho, and writes them
to another topic. All three steps run fused in one stage inside the
beam-rust-worker pool: no Java expansion service, no Java SDK harness, no
Docker. Only the runner (Beam's embedded portable runner) is Python.

    ./target/release/beam-rust-worker &
    .venv/bin/python examples/kafka_echo.py --bootstrap_servers 127.0.0.1:9092

scripts/demo.sh does all of it, broker included.
"""

import argparse
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_rust_worker import DEFAULT_EXPANSION_SERVICE, KvEcho
from beam_rust_worker.kafka import ReadFromKafka, WriteToKafka


def run(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap_servers", default="127.0.0.1:9092")
    parser.add_argument("--input_topic", default="echo-input")
    parser.add_argument("--output_topic", default="echo-output")
    parser.add_argument("--group_id", default="kafka-echo",
                        help="consumer group; a re-run reads only new records")
    parser.add_argument("--max_num_records", type=int, default=None,
                        help="stop after this many records (default: all "
                        "records present when the read starts)")
    parser.add_argument("--unbounded", action="store_true",
                        help="a streaming read that keeps waiting for new records "
                        "(run it with --streaming on Flink); the default reads "
                        "what is in the topic and ends")
    parser.add_argument("--no_commit", action="store_true",
                        help="do not commit the group's offsets when the runner "
                        "finalizes a bundle (Flink in batch mode cannot finalize "
                        "bundles and fails the job if asked to)")
    parser.add_argument("--expansion_service", default=DEFAULT_EXPANSION_SERVICE)
    args, beam_args = parser.parse_known_args(argv)
    options = PipelineOptions(
        ["--runner=PortableRunner", "--job_endpoint=embed",
         "--environment_type=LOOPBACK"] + beam_args)

    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | "Read" >> ReadFromKafka(
                consumer_config={
                    "bootstrap.servers": args.bootstrap_servers,
                    "group.id": args.group_id,
                    "auto.offset.reset": "earliest",
                },
                topics=[args.input_topic],
                max_num_records=args.max_num_records,
                stop_at_end=not args.unbounded,
                commit_offset_in_finalize=not args.no_commit,
                expansion_service=args.expansion_service)
            | "Echo" >> KvEcho(expansion_service=args.expansion_service)
            | "Write" >> WriteToKafka(
                producer_config={"bootstrap.servers": args.bootstrap_servers},
                topic=args.output_topic,
                expansion_service=args.expansion_service))


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    run()
