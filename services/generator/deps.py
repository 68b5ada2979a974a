"""What the generator's routes depend on: the one ``Generator`` of the app and its settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.generator.generation import Generator


def get_generator(request: Request) -> Generator:
    gen: Generator = request.app.state.generator
    return gen


Gen = Annotated[Generator, Depends(get_generator)]
