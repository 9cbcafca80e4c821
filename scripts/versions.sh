# Versions of every outside component, pinned in one place; sourced by
# scripts/services.sh and scripts/setup-python.sh. An environment variable of
# the same name overrides each.
#
# Beam: one version on every side (the Python SDK, Java job server, Java
# expansion service, Prism, Python boot), since Beam promises no compatibility
# between SDKs and job servers of different versions. 2.62.0 is the newest
# release whose Flink job server resolves *with all its dependencies* from the
# Maven Central our machines reach: 2.75.0 and 2.70.0 lack
# beam-runners-java-job-service and the shaded job-server jars are not served.
BEAM_VERSION="${BEAM_VERSION:-2.62.0}"
# The newest Flink line Beam 2.62.0 ships a runner for that is served here.
FLINK_VERSION="${FLINK_VERSION:-1.19}"
# Apache Kafka broker (KRaft, single node) from the org.apache.kafka:kafka_2.13 jars.
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
# The newest apache-beam on PyPI, for the proto conformance test only.
BEAM_NEWEST_PYTHON="${BEAM_NEWEST_PYTHON:-2.77.0}"
