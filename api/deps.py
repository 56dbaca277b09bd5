"""Request dependencies as Annotated aliases, so routes stay short and tests can override them."""

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis as AsyncRedis

from api.dispatch import Dispatcher
from service.images import JobImages
from service.jobstore import JobStore
from service.settings import Settings
from service.workers import WorkerRegistry


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_images(request: Request) -> JobImages:
    return request.app.state.images


def get_workers(request: Request) -> WorkerRegistry:
    return request.app.state.workers


def get_async_redis(request: Request) -> AsyncRedis:
    return request.app.state.async_redis


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
ImagesDep = Annotated[JobImages, Depends(get_images)]
WorkersDep = Annotated[WorkerRegistry, Depends(get_workers)]
AsyncRedisDep = Annotated[AsyncRedis, Depends(get_async_redis)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
