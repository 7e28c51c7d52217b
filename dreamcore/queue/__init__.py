"""The dream queue: RQ queues in fair order. rq_queues.py is what bots and workers call; fair_order.py and the
.lua scripts beside it keep the order, counters and positions; rq_private.py holds every reach into RQ's
private API."""
