"""The resources the lifespan owns, and the Annotated dependencies that hand them out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from filesvc.config import Settings
from filesvc.decoding import DecodeBudget
from filesvc.exports import Exporter
from filesvc.keys import KeyRing
from filesvc.lookup import FileLookup
from filesvc.metrics import Metrics
from filesvc.pipeline import UploadPipeline
from filesvc.resumable import Uploads
from filesvc.storage import Storage
from filesvc.variants_store import VariantRenderer


@dataclass(slots=True)
class Resources:
    """Every long-lived object of one app: built once by the lifespan, closed at shutdown."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    storage: Storage
    signing_key: bytes
    keyring: KeyRing
    metrics: Metrics
    lookup: FileLookup
    uploads: UploadPipeline
    decode_budget: DecodeBudget
    variants: VariantRenderer
    #: Resumable (tus) uploads.
    resumable: Uploads
    #: Built once here: its catalog reflects the configured tables on first use.
    exporter: Exporter


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


def get_settings(request: Request) -> Settings:
    return get_resources(request).settings


async def get_session(
    resources: Annotated[Resources, Depends(get_resources)],
) -> AsyncIterator[AsyncSession]:
    async with resources.sessions() as session:
        yield session


ResourcesDep = Annotated[Resources, Depends(get_resources)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
