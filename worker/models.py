"""Pydantic models of every DynamoDB item type (DESIGN §5): what `worktask validate` checks items against."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KEY = r"^[a-z][a-z0-9_]*$"


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    PK: str
    SK: str


class Rule(Item):
    type: Literal["rule"]
    key: str = Field(pattern=KEY)
    name: str = Field(min_length=1)
    description: str
    scope: Literal["task", "todo", "deliverable", "quality_check", "service"]
    condition: str = Field(min_length=1)
    action: Literal["block", "warn", "notify", "escalate", "auto_assign"]
    severity: Literal["error", "warning", "info"]
    enabled: bool


class Template(Item):
    type: Literal["template"]
    key: str = Field(pattern=KEY)
    name: str = Field(min_length=1)
    description: str
    kind: Literal["task_description", "todo_breakdown", "review_comment", "status_report", "incident_summary",
                  "handoff_note"]
    body: str = Field(min_length=1)
    variables: list[str]


class Persona(Item):
    type: Literal["persona"]
    key: str = Field(pattern=KEY)
    name: str = Field(min_length=1)
    role: str = Field(min_length=1)
    description: str
    workgroup: str = Field(pattern=KEY)
    expertise: list[str]
    system_prompt: str = Field(min_length=1)


class Team(Item):
    type: Literal["team"]
    key: str = Field(pattern=KEY)
    name: str = Field(min_length=1)
    description: str
    workgroup: str = Field(pattern=KEY)
    personas: list[str]
    rules: list[str]
    templates: list[str]


class Analysis(Item):
    PK: str = Field(pattern=r"^TASK#[1-9][0-9]*$")
    SK: Literal["ANALYSIS"]
    type: Literal["analysis"]
    work_task_id: int = Field(ge=1)
    complexity: int = Field(ge=1, le=13)
    risk: Literal["low", "medium", "high"]
    summary: str = Field(min_length=1)
    estimated_hours: float = Field(ge=0)
    is_test: bool = False


MODELS: dict[str, type[Item]] = {"RULE": Rule, "TEMPLATE": Template, "PERSONA": Persona, "TEAM": Team,
                                 "TASK": Analysis}


def model_for(pk: str) -> type[Item] | None:
    return MODELS.get(pk.split("#", 1)[0])
