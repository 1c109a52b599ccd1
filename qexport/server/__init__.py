"""OpenAI-compatible embeddings server: `create_app(embedder)` -> FastAPI app.

Needs the optional extra `qexport[serve]` (FastAPI, uvicorn)."""
