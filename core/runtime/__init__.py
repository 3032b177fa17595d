"""The streaming runtime: events, the async bus, the stage protocol, pipelines, metrics, the test helper and
the stages that wrap model components."""
