"""Attribute names tracekit reads from imported traces (OpenTelemetry resource and span attributes), in one place.

Importers and mappers refer to these constants, never to string literals, so a renamed
convention changes in exactly one file. The first two must equal the names capture writes
(``tracekit.capture.otel.NODE_ATTR`` / ``RUN_ID_ATTR``); a test checks that.
"""

from __future__ import annotations

# tracekit's own attributes (set by tracekit.init on its resource, or by a user on theirs)
NODE = "tracekit.node"  # span or resource attribute: the node a span is blamed on
RUN_ID = "tracekit.run_id"  # resource attribute: the run the spans belong to
RUN_NAME = "tracekit.run_name"  # resource attribute: the run's human name
RUN_KIND = "tracekit.run_kind"  # resource attribute: training, agents, service or campaign

# OpenTelemetry resource semantic conventions
SERVICE_NAME = "service.name"
PROCESS_PID = "process.pid"
HOST_NAME = "host.name"

# how an OTLP span link is stored in the links table
OTEL_LINK_RELATION = "otel.link"
OTEL_LINK_PROVENANCE = "declared"

# node of a span whose resource names no service
UNKNOWN_SERVICE = "unknown_service"
