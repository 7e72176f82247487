#!/usr/bin/env python3
"""Module import graph of src/ from `use crate::`/`use super::` lines and inline `crate::`/
`super::` paths (test modules included; a parent counts as imported by its children): prints
every pair of modules that import each other, and every cycle. Usage: hack/module-cycles.py [src]"""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else 'src'
mods = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'): continue
        p = os.path.join(d, f); rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[-1] == 'mod': rel = rel[:-1]
        if rel in (['lib'], ['main']): rel = []
        mods['::'.join(rel)] = p
def resolve(parts):
    # the deepest module the path names
    for n in range(len(parts), -1, -1):
        if '::'.join(parts[:n]) in mods: return '::'.join(parts[:n])
edges = {m: set() for m in mods}
for m, p in mods.items():
    src = open(p).read()
    code = re.sub(r'//[^\n]*', '', src)
    # inside an inline `mod tests {`, `super::` is the file's own module
    head, sep, tail = code.partition('\nmod tests {')
    code = head + sep + re.sub(r'(?<![\w:])super::', 'self::', tail)
    stmts = re.findall(r'^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);', code, re.M)
    # paths written inline in code (`super::issued::TOKEN`, `crate::api::duration::parse(..)`)
    stmts += re.findall(r'(?<![\w:])((?:crate|super)::(?:super::)*[a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)', code)
    for stmt in stmts:
        stmt = re.sub(r'\s+', '', stmt)
        base = m.split('::') if m else []
        if stmt.startswith('crate::'): parts = stmt[7:]
        elif stmt.startswith('super::'):
            parts = stmt
            b = base[:] if not mods[m].endswith('mod.rs') and m else base[:]
            # `super` of a file module a::b is a; of a mod.rs a::b is a as well
            while parts.startswith('super::'):
                parts = parts[7:]; b = b[:-1]
            parts = '::'.join(b + [parts]) if b else parts
        elif stmt.startswith('self::'): parts = '::'.join(base + [stmt[6:]])
        else: continue
        # expand one level of braces
        mm = re.match(r'^(.*?)\{(.*)\}$', parts)
        paths = []
        if mm:
            pre, inner = mm.groups(); depth = 0; cur = ''
            for ch in inner + ',':
                if ch == '{': depth += 1
                if ch == '}': depth -= 1
                if ch == ',' and depth == 0:
                    if cur: paths.append(pre + re.sub(r'\{.*', '', cur))
                    cur = ''
                else: cur += ch
        else: paths = [parts]
        for path in paths:
            segs = [s for s in path.replace('::self', '').split('::') if s and s != '*']
            t = resolve(segs)
            if t is not None and t != m and t != '':
                edges[m].add(t)
pairs = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())})
print('modules importing each other:', pairs or 'none')
# Tarjan SCC
idx = {}; low = {}; st = []; on = set(); out = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: out.append(sorted(comp))
for v in edges:
    if v not in idx: sc(v)
print('cycles:', out or 'none')
sys.exit(1 if out else 0)
