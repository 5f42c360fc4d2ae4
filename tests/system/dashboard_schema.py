#!/usr/bin/env python3
"""Writes a TypeScript file that type-checks a Grafana dashboard JSON against @grafana/schema.

Usage: dashboard_schema.py DASHBOARD.json OUT.ts; then `tsc --noEmit --strict OUT.ts` in a
folder holding node_modules/@grafana/schema. The dashboard, each panel, and each panel's
options and custom field config are object literals typed with the schema's interfaces, so
wrong types, missing required fields and unknown fields are errors. Enums are compared by
their values (JSON holds "scheme", not HeatmapColorMode.Scheme).
"""
import json
import sys

# Panel type -> the module of its options and field config types, and which of them it has.
PANEL_TYPES = {
    "timeseries": ("timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen", True),
    "heatmap": ("heatmap/panelcfg/x/HeatmapPanelCfg_types.gen", True),
    "stat": ("stat/panelcfg/x/StatPanelCfg_types.gen", False),
    "state-timeline": ("statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen", True),
}

PRELUDE = """import type { Dashboard, Panel, RowPanel } from '@grafana/schema';
// JSON holds enum values, not enum members: compare string enums by value, number enums as numbers.
type Json<T> = T extends string ? `${T}` : T extends number ? number : T extends boolean ? boolean
  : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;
"""


def main(src, out):
    dash = json.load(open(src))
    lines = [PRELUDE]
    imports = []
    for i, (ptype, (module, has_field)) in enumerate(sorted(PANEL_TYPES.items())):
        names = f"Options as O{i}" + (f", FieldConfig as F{i}" if has_field else "")
        imports.append(f"import type {{ {names} }} from '@grafana/schema/dist/esm/raw/composable/{module}';")
    lines += imports
    index = {t: i for i, t in enumerate(sorted(PANEL_TYPES))}
    refs = []
    for n, p in enumerate(dash.get("panels", [])):
        t = p.get("type")
        if t == "row":
            lines.append(f"const p{n}: Json<RowPanel> = {json.dumps(p)};")
        elif t in index:
            i = index[t]
            lines.append(f"const p{n}: Json<Panel> = {json.dumps(p)};")
            lines.append(f"const o{n}: Json<O{i}> = {json.dumps(p.get('options', {}))};")
            if PANEL_TYPES[t][1]:
                custom = p.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
                lines.append(f"const c{n}: Json<F{i}> = {json.dumps(custom)};")
        else:
            sys.exit(f"{src}: panel {n} ({p.get('title')!r}) has type {t!r}; this check knows {sorted(PANEL_TYPES) + ['row']}")
        refs.append(f"p{n}")
    # One object literal (not a spread), so that unknown dashboard fields are errors too.
    body = dict(dash, panels="__PANELS__")
    literal = json.dumps(body).replace('"__PANELS__"', f"[{', '.join(refs)}]")
    lines.append(f"const dashboard: Json<Dashboard> = {literal};")
    lines.append("export { dashboard };")
    open(out, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: dashboard_schema.py DASHBOARD.json OUT.ts")
    main(sys.argv[1], sys.argv[2])
