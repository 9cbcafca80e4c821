"""A Beam pipeline whose KvEcho step runs in the beam-rust-worker pool.

Start the pool first (defaults: pool on localhost:50000, expansion service on
localhost:8096):

    ./target/release/beam-rust-worker

then run this file with the project's venv:

    .venv/bin/python examples/kv_echo.py [--expansion_service localhost:8096]

Everything but KvEcho runs in Python on Beam's embedded portable runner; the
echo stage is sent to the pool, which runs it natively.
"""

import argparse
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from beam_rust_worker import DEFAULT_EXPANSION_SERVICE, KvEcho


def run(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expansion_service", default=DEFAULT_EXPANSION_SERVICE,
                        help="host:port of beam-rust-worker's expansion service")
    parser.add_argument("--count", type=int, default=1000,
                        help="how many records to echo")
    args, beam_args = parser.parse_known_args(argv)
    options = PipelineOptions(
        ["--runner=PortableRunner", "--job_endpoint=embed",
         "--environment_type=LOOPBACK"] + beam_args)

    records = [(b"key-%d" % i, b"value-%d" % i) for i in range(args.count)]
    records.append((b"hello", b"world"))
    with beam.Pipeline(options=options) as p:
        echoed = (
            p
            | "Records" >> beam.Create(records).with_output_types(
                beam.typehints.Tuple[bytes, bytes])
            | "Echo in Rust" >> KvEcho(expansion_service=args.expansion_service))
        assert_that(echoed, equal_to(records))
        _ = echoed | "Show one" >> beam.Filter(lambda kv: kv[0] == b"hello") | beam.Map(
            lambda kv: print("echoed by the Rust worker: %s" % (kv,)))
    print("ok: %d records came back unchanged" % len(records))


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    run()
