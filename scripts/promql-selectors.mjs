// Reads a JSON array of PromQL expressions on stdin and prints, for each,
// the metric names its vector selectors name and any syntax error, parsed
// with Prometheus's own grammar (@prometheus-io/lezer-promql, the parser of
// Prometheus's web UI). Used by scripts/check-metrics.py.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const modules = process.env.LEZER_PROMQL_MODULES;
if (!modules) {
  console.error('promql-selectors: set LEZER_PROMQL_MODULES to a node_modules with @prometheus-io/lezer-promql');
  process.exit(2);
}
const require = createRequire(`${modules}/`);
const { parser } = require('@prometheus-io/lezer-promql');

const expressions = JSON.parse(readFileSync(0, 'utf8'));
const results = expressions.map((expr) => {
  const tree = parser.parse(expr);
  const metrics = [];
  const errors = [];
  tree.iterate({
    enter(node) {
      if (node.type.isError) {
        errors.push(`syntax error at offset ${node.from}: ${JSON.stringify(expr.slice(node.from, node.from + 20))}`);
      }
      // A metric name is the Identifier directly under a VectorSelector
      // (label names, function names and `by (...)` labels are other nodes).
      if (node.name === 'Identifier' && node.node.parent?.name === 'VectorSelector') {
        metrics.push(expr.slice(node.from, node.to));
      }
      // `{__name__="x"}` names a metric too.
      if (node.name === 'UnquotedLabelMatcher' || node.name === 'LabelMatcher') {
        const text = expr.slice(node.from, node.to);
        const match = /^__name__\s*=\s*"([^"]*)"$/.exec(text);
        if (match) metrics.push(match[1]);
      }
    },
  });
  return { metrics, errors };
});
process.stdout.write(JSON.stringify(results));
