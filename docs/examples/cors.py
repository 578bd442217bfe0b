# cors.py: uvicorn cors:app (the page is served by https://shop.example, the stream here)
from shop import app as shop_app
from starlette.middleware.cors import CORSMiddleware

app = CORSMiddleware(
    shop_app,
    allow_origins=["https://shop.example"],  # exact origins: "*" is refused with credentials
    allow_credentials=True,  # the page uses new EventSource(url, {withCredentials: true})
    allow_methods=["GET"],
    allow_headers=["Last-Event-ID"],  # what a reconnect sends
)
