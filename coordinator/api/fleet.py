"""The fleet as an operator sees it: which processes answer, how deep each queue is, what waits longest."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
