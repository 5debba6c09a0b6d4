#!/usr/bin/python3
"""A small stand-in for `helm template` and a structure check of its output, for packaging/charts/ (Debian 12 has
no helm package).

Renders the subset of Helm's template language the charts use, and refuses everything else, naming the file and
line, so that a template cannot render differently here than under helm without the test noticing:
  {{ .Values.a.b }}  {{ .Release.Name }}  {{ .Release.Namespace }}  {{ .Chart.Name }}  {{ .Chart.Version }}
  {{ .Chart.AppVersion }}  {{ "literal" }}  {{/* comment */}}
  {{ if COND }} ... {{ else if COND }} ... {{ else }} ... {{ end }}, COND: a value, `not X`, `and X Y...`, `or X Y...`
  pipelines of: toYaml X, .Files.Get "path", quote, nindent N, indent N, default VALUE, b64enc
  and `{{-` / `-}}` whitespace trimming.
A value missing from its map is nil (false in a condition, an error in output: helm would print "<no value>"); a
missing map on the way is an error, as in helm ("nil pointer evaluating").

validate(docs) checks the rendered objects against the parts of the Kubernetes schemas they use: known
apiVersion/kind pairs, known fields with their types (an unknown or misspelt field is an error, as in
`kubectl apply --validate=strict`), names, selectors matching template labels, volume mounts naming declared
volumes, absolute host paths, env values that are strings, restart policies per kind, references from pods to
ConfigMaps and Secrets of the same release.

Usage: helm_render.py CHART_DIR [-f VALUES.yaml]... [--name RELEASE] [--namespace NS] [--check]
Prints the manifest as `helm template` does (documents headed `# Source: CHART/templates/FILE`); --check also
validates it and exits 1 with the problems on stderr.
"""
import argparse
import base64
import binascii
import json
import os
import re
import sys

import yaml


class RenderError(Exception):
    pass


# --- the template language ---

ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(\()|(\))|(\|)|(-?\d+)|([A-Za-z_.][A-Za-z0-9_.]*))')
FUNCS = {"toYaml": 1, "quote": 1, "nindent": 2, "indent": 2, "default": 2, "b64enc": 1, "not": 1}
VARIADIC = {"and", "or"}
MISSING = object()  # a key absent from an existing map: nil, as in Go templates


def tokenize(text, where):
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise RenderError("%s: cannot parse '%s'" % (where, text[pos:]))
        s, lp, rp, bar, num, ident = m.groups()
        if s is not None:
            out.append(("str", json.loads(s)))
        elif lp:
            out.append(("(", None))
        elif rp:
            out.append((")", None))
        elif bar:
            out.append(("|", None))
        elif num is not None:
            out.append(("num", int(num)))
        else:
            out.append(("id", ident))
        pos = m.end()
    return out


class Context:
    def __init__(self, chart_dir, values, release, namespace, chart):
        self.chart_dir = chart_dir
        self.root = {
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": True},
            "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart.get("appVersion", "")},
        }

    def lookup(self, path, where):
        if path == ".":
            raise RenderError("%s: '.' (the whole context) is not supported" % where)
        if not path.startswith(".") or path.endswith(".") or ".." in path:
            raise RenderError("%s: unknown identifier '%s'" % (where, path))
        parts = path[1:].split(".")
        if parts[0] not in ("Values", "Release", "Chart"):
            raise RenderError("%s: unknown object '.%s' (known: .Values, .Release, .Chart, .Files.Get)"
                              % (where, parts[0]))
        v = self.root
        for i, k in enumerate(parts):
            if v is None or v is MISSING:
                raise RenderError("%s: nil pointer evaluating %s (.%s is not set)"
                                  % (where, path, ".".join(parts[:i])))
            if not isinstance(v, dict):
                raise RenderError("%s: %s: .%s is not a map" % (where, path, ".".join(parts[:i])))
            if parts[0] in ("Release", "Chart") and k not in v:
                raise RenderError("%s: unknown field %s" % (where, path))
            v = v.get(k, MISSING)
        return v


def truthy(v):
    """Go templates' truth: false, 0, nil and empty strings, lists and maps are false."""
    if v is None or v is MISSING:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def go_string(v, where):
    """fmt.Sprint of a scalar, as text/template prints it."""
    if v is MISSING or v is None:
        raise RenderError("%s: the value is not set (helm would print '<no value>')" % where)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        # helm's values are float64: %v prints 1000000 as 1e+06. Refuse what would not print as written.
        if isinstance(v, float) and not v.is_integer() or abs(v) >= 1e6:
            raise RenderError("%s: helm prints the number %r in its own float64 format: quote it in the values"
                              % (where, v))
        return str(int(v))
    raise RenderError("%s: a %s cannot be printed as it is (use toYaml)" % (where, type(v).__name__))


def to_yaml(v):
    if v is MISSING or v is None:
        return "null"
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True, width=1 << 20).rstrip("\n")


def indent(n, s):
    pad = " " * n
    return pad + s.replace("\n", "\n" + pad)


class Evaluator:
    def __init__(self, ctx, where):
        self.ctx, self.where = ctx, where

    def pipeline(self, toks):
        """A pipeline: command ('|' command)*; each later command gets the previous value as its last argument."""
        cmds, cur, depth = [], [], 0
        for t in toks:
            if t[0] == "(":
                depth += 1
            elif t[0] == ")":
                depth -= 1
            if t[0] == "|" and depth == 0:
                cmds.append(cur)
                cur = []
            else:
                cur.append(t)
        cmds.append(cur)
        value, have = None, False
        for cmd in cmds:
            if not cmd:
                raise RenderError("%s: empty command in a pipeline" % self.where)
            value = self.command(cmd, [value] if have else [])
            have = True
        return value

    def operand(self, toks, i):
        kind, v = toks[i]
        if kind == "str" or kind == "num":
            return v, i + 1
        if kind == "(":
            depth, j = 1, i + 1
            while j < len(toks) and depth:
                depth += {"(": 1, ")": -1}.get(toks[j][0], 0)
                j += 1
            if depth:
                raise RenderError("%s: unbalanced '('" % self.where)
            return self.pipeline(toks[i + 1:j - 1]), j
        if kind == "id" and v.startswith("."):
            if v == ".Files.Get":
                raise RenderError("%s: .Files.Get must begin a command" % self.where)
            return self.ctx.lookup(v, self.where), i + 1
        if kind == "id" and v in ("true", "false"):
            return v == "true", i + 1
        raise RenderError("%s: unexpected '%s'" % (self.where, v if v is not None else kind))

    def command(self, toks, piped):
        kind, head = toks[0]
        if kind == "id" and (head in FUNCS or head in VARIADIC or head == ".Files.Get"):
            args, i = [], 1
            while i < len(toks):
                a, i = self.operand(toks, i)
                args.append(a)
            args += piped
            return self.call(head, args)
        if kind == "id" and not head.startswith(".") and head not in ("true", "false"):
            raise RenderError("%s: unknown function '%s' (known: %s)"
                              % (self.where, head, ", ".join(sorted(list(FUNCS) + list(VARIADIC) + [".Files.Get"]))))
        if piped:
            raise RenderError("%s: a value cannot take a piped argument" % self.where)
        v, i = self.operand(toks, 0)
        if i != len(toks):
            raise RenderError("%s: a value cannot take arguments" % self.where)
        return v

    def call(self, fn, args):
        if fn in VARIADIC:
            if len(args) < 2:
                raise RenderError("%s: %s needs two arguments or more" % (self.where, fn))
            for a in args:
                if truthy(a) == (fn == "or"):
                    return a
            return args[-1]
        if fn == ".Files.Get":
            if len(args) != 1 or not isinstance(args[0], str):
                raise RenderError("%s: .Files.Get takes one path" % self.where)
            path = os.path.normpath(os.path.join(self.ctx.chart_dir, args[0]))
            if not path.startswith(os.path.normpath(self.ctx.chart_dir) + os.sep) or not os.path.isfile(path):
                raise RenderError("%s: .Files.Get: no file '%s' in the chart (helm would return '')"
                                  % (self.where, args[0]))
            with open(path, encoding="utf-8") as f:
                return f.read()
        if len(args) != FUNCS[fn]:
            raise RenderError("%s: %s takes %d argument(s), got %d" % (self.where, fn, FUNCS[fn], len(args)))
        if fn == "not":
            return not truthy(args[0])
        if fn == "toYaml":
            return to_yaml(args[0])
        if fn == "quote":
            return "" if args[0] is None or args[0] is MISSING else json.dumps(go_string(args[0], self.where))
        if fn == "b64enc":
            return base64.b64encode(go_string(args[0], self.where).encode()).decode()
        if fn == "default":
            return args[1] if truthy(args[1]) else args[0]
        n, s = args
        if not isinstance(n, int):
            raise RenderError("%s: %s: the width must be a number" % (self.where, fn))
        s = go_string(s, self.where)
        return ("\n" if fn == "nindent" else "") + indent(n, s)


def parse(text, name):
    """Splits a template into a tree: ('text', s), ('out', toks, where), ('if', [(toks|None, body)...], where)."""
    parts, pos = [], 0
    for m in ACTION.finditer(text):
        parts.append(("text", text[pos:m.start()]))
        line = text.count("\n", 0, m.start()) + 1
        parts.append(("action", m.group(2), bool(m.group(1)), bool(m.group(3)), "%s:%d" % (name, line)))
        pos = m.end()
    parts.append(("text", text[pos:]))
    if "{{" in "".join(p[1] for p in parts if p[0] == "text") or "}}" in "".join(
            p[1] for p in parts if p[0] == "text"):
        raise RenderError("%s: an unterminated '{{' or a stray '}}'" % name)
    # Trim markers remove the whitespace (newlines included) next to the action.
    for i, p in enumerate(parts):
        if p[0] != "action":
            continue
        if p[2] and i > 0:
            parts[i - 1] = ("text", parts[i - 1][1].rstrip(" \t\r\n"))
        if p[3] and i + 1 < len(parts):
            parts[i + 1] = ("text", parts[i + 1][1].lstrip(" \t\r\n"))

    root, stack = [], []
    cur = root
    for p in parts:
        if p[0] == "text":
            if p[1]:
                cur.append(("text", p[1]))
            continue
        body, where = p[1].strip(), p[4]
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise RenderError("%s: unterminated comment" % where)
            continue
        word = body.split(None, 1)[0] if body else ""
        if word == "if":
            node = ("if", [(tokenize(body[2:], where), [])], where)
            cur.append(node)
            stack.append(node)
            cur = node[1][-1][1]
        elif word == "else":
            if not stack:
                raise RenderError("%s: 'else' without 'if'" % where)
            rest = body[4:].strip()
            if rest.startswith("if ") or rest.startswith("if\t"):
                stack[-1][1].append((tokenize(rest[2:], where), []))
            elif rest:
                raise RenderError("%s: unsupported '%s'" % (where, body))
            else:
                stack[-1][1].append((None, []))
            cur = stack[-1][1][-1][1]
        elif word == "end":
            if not stack or body != "end":
                raise RenderError("%s: 'end' without 'if'" % where)
            stack.pop()
            cur = stack[-1][1][-1][1] if stack else root
        elif word in ("range", "with", "define", "template", "include", "block", "tpl", "required", "lookup") \
                or body.startswith("$") or ":=" in body:
            raise RenderError("%s: '%s' is not supported by helm_render.py (keep the templates plain: see its "
                              "docstring)" % (where, word))
        else:
            cur.append(("out", tokenize(body, where), where))
    if stack:
        raise RenderError("%s: 'if' without 'end'" % stack[-1][2])
    return root


def render_tree(tree, ctx):
    out = []
    for node in tree:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            ev = Evaluator(ctx, node[2])
            v = ev.pipeline(node[1])
            out.append(go_string(v, node[2]))
        else:
            for cond, body in node[1]:
                if cond is None or truthy(Evaluator(ctx, node[2]).pipeline(cond)):
                    out.append(render_tree(body, ctx))
                    break
    return "".join(out)


def merge(base, over):
    """helm's coalescing of values files: maps merge key by key, anything else replaces; null deletes."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_chart(chart_dir):
    with open(os.path.join(chart_dir, "Chart.yaml"), encoding="utf-8") as f:
        chart = yaml.safe_load(f)
    for k in ("apiVersion", "name", "version"):
        if not chart.get(k):
            raise RenderError("%s/Chart.yaml: no %s" % (chart_dir, k))
    if chart["apiVersion"] != "v2":
        raise RenderError("%s/Chart.yaml: apiVersion %s (want v2)" % (chart_dir, chart["apiVersion"]))
    if chart["name"] != os.path.basename(os.path.normpath(chart_dir)):
        raise RenderError("%s/Chart.yaml: name %s differs from the directory's" % (chart_dir, chart["name"]))
    if chart.get("dependencies"):
        raise RenderError("%s/Chart.yaml: dependencies are not supported by helm_render.py" % chart_dir)
    return chart


def render(chart_dir, values_files=(), release="release-name", namespace="default"):
    """Returns (manifest text, notes text) as `helm template` would print them."""
    chart = load_chart(chart_dir)
    values = {}
    path = os.path.join(chart_dir, "values.yaml")
    for p in [path] + list(values_files):
        with open(p, encoding="utf-8") as f:
            v = yaml.safe_load(f) or {}
        if not isinstance(v, dict):
            raise RenderError("%s: not a map of values" % p)
        values = merge(values, v)
    ctx = Context(chart_dir, values, release, namespace, chart)
    tdir = os.path.join(chart_dir, "templates")
    docs, notes = [], ""
    for name in sorted(os.listdir(tdir)):
        rel = "%s/templates/%s" % (chart["name"], name)
        with open(os.path.join(tdir, name), encoding="utf-8") as f:
            text = render_tree(parse(f.read(), rel), ctx)
        if name == "NOTES.txt":
            notes = text
            continue
        if name.startswith("_") or not name.endswith((".yaml", ".yml")):
            raise RenderError("%s: only .yaml templates and NOTES.txt are supported" % rel)
        for piece in re.split(r"(?m)^---[ \t]*$", text):
            if piece.strip() and any(line.strip() and not line.lstrip().startswith("#")
                                     for line in piece.splitlines()):
                # helm trims each document (releaseutil.SplitManifests: strings.TrimSpace), then ends it with \n
                docs.append("---\n# Source: %s\n%s\n" % (rel, piece.strip()))
    return "".join(docs), notes


# --- the structure check ---

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
HOSTPATH_TYPES = {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"}

# Each schema: field -> type, where a type is str/int/bool, "any", "strmap" (string -> string), "quantity",
# ("list", TYPE), or a dict (a nested object: only its fields are allowed).
ANY = "any"
META = {"name": str, "namespace": str, "labels": "strmap", "annotations": "strmap"}
ENV_VAR = {"name": str, "value": str, "valueFrom": {
    "secretKeyRef": {"name": str, "key": str, "optional": bool},
    "configMapKeyRef": {"name": str, "key": str, "optional": bool},
    "fieldRef": {"fieldPath": str, "apiVersion": str}}}
CONTAINER = {
    "name": str, "image": str, "imagePullPolicy": str, "command": ("list", str), "args": ("list", str),
    "workingDir": str, "env": ("list", ENV_VAR),
    "volumeMounts": ("list", {"name": str, "mountPath": str, "readOnly": bool, "subPath": str,
                              "mountPropagation": str}),
    "securityContext": {"privileged": bool, "runAsUser": int, "runAsGroup": int, "runAsNonRoot": bool,
                        "allowPrivilegeEscalation": bool, "readOnlyRootFilesystem": bool,
                        "capabilities": {"add": ("list", str), "drop": ("list", str)}},
    "resources": {"limits": "quantitymap", "requests": "quantitymap"},
    "ports": ("list", {"name": str, "containerPort": int, "hostPort": int, "protocol": str}),
    "stdin": bool, "tty": bool,
}
VOLUME = {"name": str, "hostPath": {"path": str, "type": str},
          "configMap": {"name": str, "defaultMode": int, "optional": bool,
                        "items": ("list", {"key": str, "path": str, "mode": int})},
          "secret": {"secretName": str, "defaultMode": int, "optional": bool},
          "emptyDir": {"medium": str, "sizeLimit": "quantity"}}
POD_SPEC = {
    "containers": ("list", CONTAINER), "initContainers": ("list", CONTAINER), "volumes": ("list", VOLUME),
    "restartPolicy": str, "hostNetwork": bool, "hostPID": bool, "hostIPC": bool, "dnsPolicy": str,
    "hostname": str, "nodeSelector": "strmap", "tolerations": ("list", ANY), "affinity": ANY,
    "priorityClassName": str, "serviceAccountName": str, "terminationGracePeriodSeconds": int,
    "runtimeClassName": str, "securityContext": ANY,
}
POD_TEMPLATE = {"metadata": META, "spec": POD_SPEC}
SELECTOR = {"matchLabels": "strmap"}
KINDS = {
    ("v1", "ConfigMap"): {"data": "strmap", "binaryData": "strmap", "immutable": bool},
    ("v1", "Secret"): {"data": "strmap", "stringData": "strmap", "type": str, "immutable": bool},
    ("v1", "ServiceAccount"): {},
    ("apps/v1", "DaemonSet"): {"spec": {"selector": SELECTOR, "template": POD_TEMPLATE,
                                        "updateStrategy": ANY, "minReadySeconds": int}},
    ("apps/v1", "Deployment"): {"spec": {"selector": SELECTOR, "template": POD_TEMPLATE, "replicas": int,
                                         "strategy": ANY}},
    ("batch/v1", "Job"): {"spec": {"template": POD_TEMPLATE, "backoffLimit": int, "completions": int,
                                   "parallelism": int, "ttlSecondsAfterFinished": int,
                                   "activeDeadlineSeconds": int}},
    ("node.k8s.io/v1", "RuntimeClass"): {"handler": str, "overhead": ANY, "scheduling": ANY},
}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def check_type(v, t, path, errs):
    if t == ANY:
        return
    if t in (str, int, bool):
        ok = isinstance(v, t) and not (t is int and isinstance(v, bool))
        if not ok:
            errs.append("%s: %r is not a %s" % (path, v, {str: "string", int: "integer", bool: "boolean"}[t]))
        return
    if t == "strmap":
        if not isinstance(v, dict):
            errs.append("%s: not a map" % path)
            return
        for k, x in v.items():
            if not isinstance(k, str) or not isinstance(x, str):
                errs.append("%s.%s: %r is not a string (quote it)" % (path, k, x))
        return
    if t in ("quantity", "quantitymap"):
        items = v.items() if t == "quantitymap" and isinstance(v, dict) else [(None, v)]
        if t == "quantitymap" and not isinstance(v, dict):
            errs.append("%s: not a map" % path)
            return
        for k, x in items:
            if isinstance(x, bool) or not (isinstance(x, int) or isinstance(x, str) and QUANTITY.match(x)):
                errs.append("%s%s: %r is not a quantity" % (path, "." + k if k else "", x))
        return
    if isinstance(t, tuple):
        if not isinstance(v, list):
            errs.append("%s: not a list" % path)
            return
        for i, x in enumerate(v):
            check_type(x, t[1], "%s[%d]" % (path, i), errs)
        return
    if not isinstance(v, dict):
        errs.append("%s: not a map" % path)
        return
    for k, x in v.items():
        if k not in t:
            errs.append("%s: unknown field '%s' (known: %s)" % (path, k, ", ".join(sorted(t))))
        else:
            check_type(x, t[k], "%s.%s" % (path, k), errs)


def check_pod(spec, path, kind, objects, errs):
    volumes = {}
    for i, vol in enumerate(spec.get("volumes") or []):
        name = vol.get("name")
        vp = "%s.volumes[%d]" % (path, i)
        if not isinstance(name, str) or not DNS_LABEL.match(name):
            errs.append("%s.name: %r is not a DNS label" % (vp, name))
        elif name in volumes:
            errs.append("%s: volume '%s' declared twice" % (vp, name))
        volumes[name] = vol
        sources = [k for k in vol if k != "name"]
        if len(sources) != 1:
            errs.append("%s: needs exactly one source, has %s" % (vp, sources or "none"))
        hp = vol.get("hostPath")
        if isinstance(hp, dict):
            if not str(hp.get("path", "")).startswith("/"):
                errs.append("%s.hostPath.path: %r is not absolute" % (vp, hp.get("path")))
            if hp.get("type", "") not in HOSTPATH_TYPES:
                errs.append("%s.hostPath.type: %r is not one of %s" % (vp, hp.get("type"), sorted(HOSTPATH_TYPES)))
        cm = vol.get("configMap")
        if isinstance(cm, dict) and not cm.get("optional"):
            target = objects.get(("ConfigMap", cm.get("name")))
            if target is None:
                errs.append("%s.configMap: no ConfigMap '%s' in the release" % (vp, cm.get("name")))
            else:
                for it in cm.get("items") or []:
                    if it.get("key") not in (target.get("data") or {}):
                        errs.append("%s.configMap.items: ConfigMap '%s' has no key '%s'"
                                    % (vp, cm.get("name"), it.get("key")))
    containers = spec.get("containers")
    if not containers:
        errs.append("%s.containers: at least one container is required" % path)
    names = set()
    for field in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(field) or []):
            cp = "%s.%s[%d]" % (path, field, i)
            if not isinstance(c, dict):
                continue
            if not isinstance(c.get("name"), str) or not DNS_LABEL.match(c["name"]):
                errs.append("%s.name: %r is not a DNS label" % (cp, c.get("name")))
            elif c["name"] in names:
                errs.append("%s.name: '%s' used twice" % (cp, c["name"]))
            names.add(c.get("name"))
            if not isinstance(c.get("image"), str) or not c["image"].strip() or c["image"] != c["image"].strip() \
                    or c["image"].endswith(":"):
                errs.append("%s.image: %r is not an image reference" % (cp, c.get("image")))
            if c.get("imagePullPolicy", "IfNotPresent") not in ("Always", "IfNotPresent", "Never"):
                errs.append("%s.imagePullPolicy: %r" % (cp, c["imagePullPolicy"]))
            mounts = set()
            for j, m in enumerate(c.get("volumeMounts") or []):
                mp = "%s.volumeMounts[%d]" % (cp, j)
                if m.get("name") not in volumes:
                    errs.append("%s: names no volume of the pod: '%s' (declared: %s)"
                                % (mp, m.get("name"), ", ".join(sorted(volumes)) or "none"))
                if not str(m.get("mountPath", "")).startswith("/"):
                    errs.append("%s.mountPath: %r is not absolute" % (mp, m.get("mountPath")))
                elif m["mountPath"] in mounts:
                    errs.append("%s.mountPath: '%s' mounted twice" % (mp, m["mountPath"]))
                mounts.add(m.get("mountPath"))
                if m.get("mountPropagation", "None") not in ("None", "HostToContainer", "Bidirectional"):
                    errs.append("%s.mountPropagation: %r" % (mp, m["mountPropagation"]))
            envs = set()
            for j, e in enumerate(c.get("env") or []):
                ep = "%s.env[%d]" % (cp, j)
                if not isinstance(e.get("name"), str) or not ENV_NAME.match(e["name"]):
                    errs.append("%s.name: %r is not an environment variable name" % (ep, e.get("name")))
                elif e["name"] in envs:
                    errs.append("%s.name: '%s' set twice" % (ep, e["name"]))
                envs.add(e.get("name"))
                if "value" in e and "valueFrom" in e:
                    errs.append("%s: both value and valueFrom" % ep)
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if isinstance(ref, dict) and not ref.get("optional"):
                    target = objects.get(("Secret", ref.get("name")))
                    keys = set((target or {}).get("data") or {}) | set((target or {}).get("stringData") or {})
                    if target is None or ref.get("key") not in keys:
                        errs.append("%s.valueFrom.secretKeyRef: no Secret '%s' with key '%s' in the release"
                                    % (ep, ref.get("name"), ref.get("key")))
    policy = spec.get("restartPolicy")
    if kind == "Job" and policy not in ("Never", "OnFailure"):
        errs.append("%s.restartPolicy: %r (a Job needs Never or OnFailure)" % (path, policy))
    if kind in ("DaemonSet", "Deployment") and policy not in (None, "Always"):
        errs.append("%s.restartPolicy: %r (a %s needs Always)" % (path, policy, kind))
    if spec.get("dnsPolicy", "ClusterFirst") not in ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"):
        errs.append("%s.dnsPolicy: %r" % (path, spec["dnsPolicy"]))


def validate(manifest):
    """Returns (objects, problems): the parsed documents and a list of strings (empty: valid)."""
    errs, docs = [], []
    for piece in re.split(r"(?m)^---[ \t]*\n", manifest):
        if not piece.strip():
            continue
        source = re.match(r"# Source: (\S+)", piece)
        where = source.group(1) if source else "?"
        try:
            doc = yaml.safe_load(piece)
        except yaml.YAMLError as e:
            errs.append("%s: not YAML: %s" % (where, str(e).replace("\n", " ")))
            continue
        if doc is None:
            continue
        docs.append((where, doc))
    objects = {}
    for where, doc in docs:
        if not isinstance(doc, dict):
            errs.append("%s: not a map" % where)
            continue
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in KINDS:
            errs.append("%s: unknown apiVersion/kind %s/%s (known: %s)" % (where, key[0], key[1], ", ".join(
                "%s %s" % k for k in sorted(KINDS))))
            continue
        name = (doc.get("metadata") or {}).get("name")
        if (key[1], name) in objects:
            errs.append("%s: a second %s '%s'" % (where, key[1], name))
        objects[(key[1], name)] = doc
    for where, doc in docs:
        if not isinstance(doc, dict) or (doc.get("apiVersion"), doc.get("kind")) not in KINDS:
            continue
        kind = doc["kind"]
        path = "%s: %s" % (where, kind)
        schema = dict(KINDS[(doc["apiVersion"], kind)], apiVersion=str, kind=str, metadata=META)
        check_type(doc, schema, path, errs)
        meta = doc.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not (DNS_LABEL if kind in ("DaemonSet", "Deployment", "Job")
                                             else DNS_SUBDOMAIN).match(name):
            errs.append("%s.metadata.name: %r is not a valid name" % (path, name))
        for k, v in (meta.get("labels") or {}).items():
            if not isinstance(v, str) or not LABEL_VALUE.match(v):
                errs.append("%s.metadata.labels.%s: %r is not a label value" % (path, k, v))
        if kind == "RuntimeClass" and not (isinstance(doc.get("handler"), str) and DNS_LABEL.match(doc["handler"])):
            errs.append("%s.handler: %r is not a DNS label" % (path, doc.get("handler")))
        if kind in ("ConfigMap", "Secret"):
            for field in ("data", "stringData", "binaryData"):
                for k, v in (doc.get(field) or {}).items():
                    if not CONFIG_KEY.match(str(k)):
                        errs.append("%s.%s: key %r" % (path, field, k))
                    if field in ("data", "binaryData") and (kind == "Secret" or field == "binaryData"):
                        try:
                            base64.b64decode(str(v), validate=True)
                        except binascii.Error:
                            errs.append("%s.%s.%s: not base64" % (path, field, k))
        spec = doc.get("spec")
        if kind in ("DaemonSet", "Deployment", "Job"):
            if not isinstance(spec, dict) or not isinstance(spec.get("template"), dict):
                errs.append("%s.spec.template: required" % path)
                continue
            tmeta = spec["template"].get("metadata") or {}
            labels = tmeta.get("labels") or {}
            if kind != "Job":
                match = (spec.get("selector") or {}).get("matchLabels") or {}
                if not match:
                    errs.append("%s.spec.selector.matchLabels: required" % path)
                for k, v in match.items():
                    if labels.get(k) != v:
                        errs.append("%s.spec.selector.matchLabels: %s=%s is not a label of the pod template "
                                    "(labels: %s)" % (path, k, v, labels))
            for k, v in labels.items():
                if not isinstance(v, str) or not LABEL_VALUE.match(v):
                    errs.append("%s.spec.template.metadata.labels.%s: %r is not a label value" % (path, k, v))
            pod = spec["template"].get("spec")
            if not isinstance(pod, dict):
                errs.append("%s.spec.template.spec: required" % path)
                continue
            check_pod(pod, path + ".spec.template.spec", kind, objects, errs)
    return [d for _, d in docs], errs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chart")
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--name", default="release-name")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    try:
        manifest, _ = render(a.chart, a.values, a.name, a.namespace)
    except (RenderError, OSError, yaml.YAMLError) as e:
        print("helm_render: %s" % e, file=sys.stderr)
        return 1
    sys.stdout.write(manifest)
    if a.check:
        _, errs = validate(manifest)
        for e in errs:
            print("helm_render: %s" % e, file=sys.stderr)
        return 1 if errs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
