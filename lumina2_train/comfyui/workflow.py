"""ComfyUI workflow files: the UI format (example_workflows/*.json, what the browser saves) -> the API format that
POST /prompt (and `comfy run --workflow`) takes, using a server's /object_info for the widget order.

Plain Python, no ComfyUI import: the caller passes /object_info's JSON (or the same dicts built in-process).
Handled: widgets in input_order (required, then optional), the extra value a `control_after_generate` widget
stores (the frontend adds one to any INT named seed that does not say False), widgets turned into sockets (the
link wins), notes (skipped), muted nodes (skipped), Reroute nodes (followed). Bypassed nodes are refused: their
pass-through needs the node's types, which this does not guess.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from ..errors import Lumina2TrainError

FRONTEND_ONLY = frozenset({"Note", "MarkdownNote"})  # never sent to the server
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
MODE_MUTED, MODE_BYPASSED = 2, 4


class WorkflowError(Lumina2TrainError):
    """A workflow file that cannot be turned into a prompt (unknown node type, broken link, ...)."""


def _is_widget(spec) -> bool:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput") or opts.get("rawLink"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_names(info: dict) -> list[tuple[str, int]]:
    """(name, number of stored values) per widget of a node type, in the order the frontend stores them."""
    inputs = info.get("input", {})
    order = info.get("input_order") or {cat: list(specs) for cat, specs in inputs.items()}
    out = []
    for cat in ("required", "optional"):
        for name in order.get(cat, []):
            spec = inputs.get(cat, {}).get(name)
            if spec is None or not _is_widget(spec):
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, 2 if has_seed_control(name, spec[0], opts) else 1))
    return out


def has_seed_control(name: str, kind, opts: dict) -> bool:
    """Whether the frontend adds a 'control after generate' widget (a second stored value): when the input asks
    for one, and for an INT named seed or noise_seed unless it says control_after_generate False."""
    flag = opts.get("control_after_generate")
    if flag is None:
        return kind == "INT" and name in ("seed", "noise_seed")
    return bool(flag)


def widget_inputs(node: dict, info: dict) -> dict:
    """A UI node's widget values by input name."""
    values = node.get("widgets_values")
    if isinstance(values, dict):  # some custom nodes store a dict keyed by name
        return {name: values[name] for name, _ in widget_names(info) if name in values}
    values, out, i = list(values or []), {}, 0
    for name, count in widget_names(info):
        if i >= len(values):
            break
        out[name] = values[i]
        i += count
    return out


def _links(workflow: dict) -> dict[int, tuple[int, int]]:
    out = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):  # newer frontends may store links as objects
            out[int(link["id"])] = (int(link["origin_id"]), int(link["origin_slot"]))
        else:
            out[int(link[0])] = (int(link[1]), int(link[2]))
    return out


def _source(link_id: int, links: dict, nodes: dict, seen: frozenset = frozenset()) -> list | None:
    """[origin node id, slot] of a link, through Reroute nodes; None when it ends at a muted node."""
    if link_id not in links or link_id in seen:
        raise WorkflowError(f"link {link_id}: missing from the workflow's links (or a Reroute loop). Re-save the "
                            "workflow in ComfyUI")
    node_id, slot = links[link_id]
    node = nodes.get(node_id)
    if node is None:
        raise WorkflowError(f"link {link_id}: comes from node {node_id}, which is not in the workflow")
    if node.get("type") == "Reroute":
        upstream = next((i.get("link") for i in node.get("inputs", []) if i.get("link") is not None), None)
        return None if upstream is None else _source(int(upstream), links, nodes, seen | {link_id})
    if node.get("mode", 0) == MODE_MUTED:
        return None
    return [str(node_id), slot]


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt {node id: {"class_type", "inputs", "_meta"}} of a UI-format workflow.

    Raises:
        WorkflowError: a node type the server does not have (lists them), a bypassed node, a broken link.
    """
    if "nodes" not in workflow:
        if all(isinstance(v, dict) and "class_type" in v for v in workflow.values()):
            return copy.deepcopy(workflow)  # already API format
        raise WorkflowError("this JSON is neither a UI workflow (no 'nodes') nor an API prompt")
    nodes = {int(n["id"]): n for n in workflow["nodes"]}
    links = _links(workflow)
    runnable = [n for n in nodes.values() if n.get("type") not in FRONTEND_ONLY | {"Reroute"}
                and n.get("mode", 0) != MODE_MUTED]
    unknown = sorted({n["type"] for n in runnable if n["type"] not in object_info})
    if unknown:
        raise WorkflowError(f"node types not registered on this server: {', '.join(unknown)}. Install the packs "
                            "that provide them")
    prompt = {}
    for node in runnable:
        if node.get("mode", 0) == MODE_BYPASSED:
            raise WorkflowError(f"node {node['id']} ({node['type']}) is bypassed; un-bypass or mute it")
        inputs = widget_inputs(node, object_info[node["type"]])
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                source = _source(int(slot["link"]), links, nodes)
                if source is None:
                    inputs.pop(slot["name"], None)
                else:
                    inputs[slot["name"]] = source
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title") or node["type"]}}
    return prompt


def node_types(workflow: dict) -> set[str]:
    """Every node type a UI workflow uses (notes and reroutes included)."""
    return {n["type"] for n in workflow.get("nodes", [])}


def nodes_of_type(prompt: dict, class_types: str | Iterable[str]) -> list[str]:
    """Ids of an API prompt's nodes of the given type(s), in id order."""
    wanted = {class_types} if isinstance(class_types, str) else set(class_types)
    return sorted((k for k, v in prompt.items() if v["class_type"] in wanted), key=lambda k: (len(k), k))


__all__ = ["FRONTEND_ONLY", "WorkflowError", "has_seed_control", "node_types", "nodes_of_type", "ui_to_api",
           "widget_inputs", "widget_names"]
