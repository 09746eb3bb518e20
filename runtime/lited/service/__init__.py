"""The service: `lited serve` and its front ends.

    daemon.py     lifecycle, signals, streams, reload (one reload record), status
    requests.py   the request core every front end uses: queue, workers, ping/status/infer/reload/snapshot
    images.py     an infer request's image: decoded and bounded
    render.py     a result drawn on its frame (snapshot, demo)
    bus.py        the ZeroMQ front end: PUB for results and events, ROUTER for requests
    sdnotify.py   systemd notify and the watchdog fed by loop beats
    logs.py       journald logging with structured fields
    uplink.py     the MQTT uplink: selected results, crops, events, health out; answers, requests in
    outbox.py     the uplink's durable, bounded store-and-forward on disk
"""
