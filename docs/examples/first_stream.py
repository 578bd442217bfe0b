# first_stream.py: uvicorn first_stream:app
from orders import events

from ssebus import Broadcaster, InMemoryEventBus, SseEndpoint

bus = InMemoryEventBus()
app = SseEndpoint(Broadcaster(bus, events))  # the server's lifespan starts the broadcaster
