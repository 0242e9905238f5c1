'use strict';
// Settings for every Node process of bullwait, from the SAME environment variables the Python
// side reads (bullwait/settings.py), and the catalog that `bullwait catalog --json` wrote.
// A bad value throws a ConfigError whose message names the variable.
const fs = require('node:fs');
const path = require('node:path');
const IORedis = require('ioredis');

const CATALOG_PATH = process.env.BULLWAIT_CATALOG || path.join(__dirname, '..', 'catalog.json');

class ConfigError extends Error {}

function loadCatalog(file = CATALOG_PATH) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ConfigError(`cannot read the catalog ${file} (${err.message}): regenerate it with \`bullwait catalog --json > node-compat/catalog.json\``);
  }
}

function intEnv(env, name, fallback, min, max) {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name}: must be an integer between ${min} and ${max} (got ${JSON.stringify(raw)})`);
  }
  return value;
}

const SENTINELS_FORM = 'host:port pairs separated by commas, '
  + 'e.g. sentinel-1:26379,sentinel-2:26379,sentinel-3:26379';

const CLUSTER_FORM = 'host:port pairs separated by commas, e.g. 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000';
// BullMQ's prefix on a cluster when BULLMQ_PREFIX is unset: the tag puts every queue's keys on one slot.
const CLUSTER_DEFAULT_PREFIX = '{bull}';
// ... and with BULLWAIT_QUEUE_NAMES=tagged: untagged, so each queue's own tag places its keys.
const CLUSTER_TAGGED_DEFAULT_PREFIX = 'bull';
const NAMINGS = ['current', 'legacy', 'tagged'];

/** One REDIS_SENTINELS entry, `host:port` or `[v6]:port`; `n` (1-based) names it in messages. */
function parseSentinel(entry, n) {
  return parseNode(entry, n, 'REDIS_SENTINELS', SENTINELS_FORM,
    'logins go in REDIS_SENTINEL_USERNAME/REDIS_SENTINEL_PASSWORD', 'sentinel-1:26379 (26379 is Sentinel\'s usual port)');
}

/** One REDIS_CLUSTER_NODES entry, read as a REDIS_SENTINELS one (bullwait/settings.py does the same). */
function parseClusterNode(entry, n) {
  return parseNode(entry, n, 'REDIS_CLUSTER_NODES', CLUSTER_FORM,
    'logins go in REDIS_USERNAME/REDIS_PASSWORD', 'redis-1:7000');
}

function parseNode(entry, n, name, form, loginHint, example) {
  // An entry with a scheme or a login may hold a password: it is never repeated.
  const shown = /@|:\/\//.test(entry) ? `entry ${n}` : `entry ${n} ${JSON.stringify(entry.slice(0, 60))}`;
  if (!entry) throw new ConfigError(`${name}: entry ${n} is empty; list ${form}`);
  if (/:\/\//.test(entry) || entry.includes('@')) {
    throw new ConfigError(`${name}: ${shown} is a URL; list ${form} (${loginHint})`);
  }
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]/,]+)):(\d{1,5})$/.exec(entry);
  if (!match) {
    const hint = (entry.match(/:/g) || []).length > 1 && !entry.startsWith('[')
      ? `put an IPv6 address in brackets, e.g. [::1]:${example.split(':')[1].split(' ')[0]}`
      : `write host:port, e.g. ${example}`;
    throw new ConfigError(`${name}: ${shown} is not host:port; ${hint}`);
  }
  const port = Number(match[3]);
  if (port < 1 || port > 65535) {
    throw new ConfigError(`${name}: ${shown} has port ${port}; use 1 to 65535`);
  }
  return { host: match[1] || match[2], port };
}

/** True when keys starting with `prefix` hash by a tag in it, as Redis Cluster reads one. */
function hasHashTag(prefix) {
  const start = prefix.indexOf('{');
  return start >= 0 && prefix.indexOf('}', start + 1) > start + 1;
}

/**
 * ioredis Cluster options (REDIS_CLUSTER_NODES): seed nodes, and per-node options (credentials,
 * TLS) that `withCredentialsAndTls` fills in. A cluster has database 0 only.
 */
function clusterOptions(env) {
  if (!env.REDIS_CLUSTER_NODES.trim()) {
    throw new ConfigError(`REDIS_CLUSTER_NODES: is blank; list ${CLUSTER_FORM}, or unset it`);
  }
  const db = intEnv(env, 'REDIS_QUEUE_DB', 0, 0, 1 << 20);
  if (db !== 0) {
    throw new ConfigError(`REDIS_QUEUE_DB: a Redis Cluster has database 0 only (got ${db}); set REDIS_QUEUE_DB=0 or unset it`);
  }
  const nodes = env.REDIS_CLUSTER_NODES.split(',').map((entry, i) => parseClusterNode(entry.trim(), i + 1));
  return { clusterNodes: nodes, db: 0 };
}

/**
 * ioredis options for Sentinel (REDIS_SENTINELS), as the Python side reads the same variables:
 * the sentinels have their own login (REDIS_SENTINEL_USERNAME/PASSWORD), the data nodes keep
 * REDIS_USERNAME/PASSWORD and REDIS_QUEUE_DB. REDIS_HOST/REDIS_PORT are not used.
 */
function sentinelOptions(env) {
  if (!env.REDIS_SENTINELS.trim()) {
    throw new ConfigError(`REDIS_SENTINELS: is blank; list ${SENTINELS_FORM}, or unset it`);
  }
  const sentinels = env.REDIS_SENTINELS.split(',').map((entry, i) => parseSentinel(entry.trim(), i + 1));
  const name = env.REDIS_SENTINEL_MASTER || 'mymaster';
  if (!/^\S+$/.test(name)) {
    throw new ConfigError('REDIS_SENTINEL_MASTER: must be the master group name the sentinels monitor, '
      + 'without white space (default mymaster)');
  }
  const opts = {
    sentinels,
    name,
    db: intEnv(env, 'REDIS_QUEUE_DB', 1, 0, 1 << 20),
    // Subscribe to the sentinels' +switch-master and reconnect at once, instead of writing to
    // a demoted master until Sentinel reconfigures it (seconds of lost writes).
    failoverDetector: true,
  };
  if (env.REDIS_SENTINEL_USERNAME) opts.sentinelUsername = env.REDIS_SENTINEL_USERNAME;
  if (env.REDIS_SENTINEL_PASSWORD) opts.sentinelPassword = env.REDIS_SENTINEL_PASSWORD;
  return opts;
}

/**
 * ioredis options: a cluster (REDIS_CLUSTER_NODES), Sentinel (REDIS_SENTINELS), or one node (REDIS_URL, or REDIS_HOST/REDIS_PORT/
 * REDIS_QUEUE_DB), plus credentials and TLS.
 */
function redisOptions(env = process.env) {
  let opts;
  if (env.REDIS_CLUSTER_NODES && (env.REDIS_URL || env.REDIS_SENTINELS)) {
    const other = env.REDIS_URL ? 'REDIS_URL' : 'REDIS_SENTINELS';
    throw new ConfigError(`${other} and REDIS_CLUSTER_NODES are both set, naming two Redis topologies: `
      + `keep REDIS_CLUSTER_NODES for a cluster, or ${other} and unset REDIS_CLUSTER_NODES`);
  }
  if (env.REDIS_CLUSTER_NODES) return withCredentialsAndTls(clusterOptions(env), env);
  if (env.REDIS_SENTINELS && env.REDIS_URL) {
    throw new ConfigError('REDIS_URL and REDIS_SENTINELS are both set: they name two Redis topologies; '
      + 'unset REDIS_URL to use Sentinel, or REDIS_SENTINELS for one node');
  }
  if (env.REDIS_SENTINELS) return withCredentialsAndTls(sentinelOptions(env), env);
  const url = env.REDIS_URL;
  if (url) {
    let parsed;
    try {
      parsed = new URL(url);
    } catch {
      throw new ConfigError('REDIS_URL: must look like redis://[user:pass@]host:port/db (could not parse it)');
    }
    if (parsed.protocol === 'unix:') {
      opts = { path: decodeURIComponent(parsed.pathname), db: Number(parsed.searchParams.get('db') || 0) };
    } else if (parsed.protocol === 'redis:' || parsed.protocol === 'rediss:') {
      const db = parsed.pathname && parsed.pathname !== '/' ? Number(parsed.pathname.slice(1)) : 0;
      if (!Number.isInteger(db) || db < 0) throw new ConfigError(`REDIS_URL: bad database number ${JSON.stringify(parsed.pathname.slice(1))}`);
      opts = { host: parsed.hostname || 'localhost', port: Number(parsed.port || 6379), db };
      if (parsed.username) opts.username = decodeURIComponent(parsed.username);
      if (parsed.password) opts.password = decodeURIComponent(parsed.password);
      if (parsed.protocol === 'rediss:') opts.tls = {};
    } else {
      throw new ConfigError('REDIS_URL: must start with redis://, rediss:// or unix://');
    }
  } else {
    opts = {
      host: env.REDIS_HOST || 'localhost',
      port: intEnv(env, 'REDIS_PORT', 6379, 1, 65535),
      db: intEnv(env, 'REDIS_QUEUE_DB', 1, 0, 1 << 20),
    };
  }
  return withCredentialsAndTls(opts, env);
}

function withCredentialsAndTls(opts, env) {
  if (env.REDIS_USERNAME && !opts.username) opts.username = env.REDIS_USERNAME;
  if (env.REDIS_PASSWORD && !opts.password) opts.password = env.REDIS_PASSWORD;
  if (env.REDIS_TLS_CA_FILE) {
    if (!fs.existsSync(env.REDIS_TLS_CA_FILE)) throw new ConfigError(`REDIS_TLS_CA_FILE: no such file ${JSON.stringify(env.REDIS_TLS_CA_FILE)}`);
    opts.tls = { ...(opts.tls || {}), ca: fs.readFileSync(env.REDIS_TLS_CA_FILE) };
    if (opts.sentinels) {
      // ioredis uses `tls` for the data nodes only with enableTLSForSentinelMode; the sentinels
      // take their own `sentinelTLS`. One CA serves both, as with one node.
      opts.enableTLSForSentinelMode = true;
      opts.sentinelTLS = { ca: opts.tls.ca };
    }
  }
  // bullmq workers need this; for queues it is harmless.
  opts.maxRetriesPerRequest = null;
  if (opts.clusterNodes) {
    // ioredis.Cluster takes what each node's connection needs under `redisOptions`.
    const { clusterNodes, db, ...redisOptions } = opts;
    return { clusterNodes, db, redisOptions };
  }
  return opts;
}

/**
 * An ioredis client for `opts` (from redisOptions): an `IORedis.Cluster` on a cluster, else one
 * `IORedis`. `extra` are client options (retryStrategy, lazyConnect, ...).
 */
function createRedis(opts, extra = {}) {
  if (opts.clusterNodes) {
    const { retryStrategy, ...rest } = extra;
    const clusterOpts = { redisOptions: { ...opts.redisOptions, ...rest }, lazyConnect: rest.lazyConnect };
    if (retryStrategy) clusterOpts.clusterRetryStrategy = retryStrategy;
    return new IORedis.Cluster(opts.clusterNodes, clusterOpts);
  }
  return new IORedis({ ...opts, ...extra });
}

/** Where Redis is, for logs: never a password. */
function describeRedis(opts) {
  if (opts.clusterNodes) {
    const list = opts.clusterNodes.map((n) => (n.host.includes(':') ? `[${n.host}]` : n.host) + `:${n.port}`).join(',');
    return `cluster://${list}${opts.redisOptions.tls ? ' (tls)' : ''}`;
  }
  if (opts.path) return `unix://${opts.path}`;
  if (opts.sentinels) {
    const list = opts.sentinels.map((s) => (s.host.includes(':') ? `[${s.host}]` : s.host) + `:${s.port}`).join(',');
    return `sentinel master ${opts.name} via ${list} db ${opts.db}${opts.tls ? ' (tls)' : ''}`;
  }
  return `${opts.tls ? 'rediss' : 'redis'}://${opts.host}:${opts.port}/${opts.db}`;
}

/** Everything a Node process needs: connection, prefix, queue names under the chosen naming. */
function loadConfig(env = process.env) {
  const catalog = loadCatalog();
  const redis = redisOptions(env);
  // Unset is `current`; an empty value is refused, as bullwait/settings.py refuses it.
  const naming = (env.BULLWAIT_QUEUE_NAMES === undefined ? 'current' : env.BULLWAIT_QUEUE_NAMES).toLowerCase();
  if (!NAMINGS.includes(naming)) {
    throw new ConfigError(`BULLWAIT_QUEUE_NAMES: must be current, legacy or tagged (got ${JSON.stringify(env.BULLWAIT_QUEUE_NAMES)})`);
  }
  const clusterDefault = naming === 'tagged' ? CLUSTER_TAGGED_DEFAULT_PREFIX : CLUSTER_DEFAULT_PREFIX;
  const prefix = env.BULLMQ_PREFIX || (redis.clusterNodes ? clusterDefault : 'bull');
  if (/\s/.test(prefix)) throw new ConfigError('BULLMQ_PREFIX: must not contain white space');
  if (redis.clusterNodes && !hasHashTag(prefix) && naming !== 'tagged') {
    const name = prefix.replace(/[{}]/g, '') || 'bull';
    throw new ConfigError(`BULLMQ_PREFIX: on a Redis Cluster each queue's keys must share one slot, as BullMQ's scripts `
      + `need, and neither the prefix (${JSON.stringify(prefix)}) nor the queue names carry a hash tag; write the prefix `
      + `in braces, e.g. {${name}} (or unset it for ${CLUSTER_DEFAULT_PREFIX}), or set BULLWAIT_QUEUE_NAMES=tagged `
      + 'to give each queue its own tag');
  }
  const queueNames = { current: catalog.queueNames, legacy: catalog.legacyQueueNames, tagged: catalog.taggedQueueNames }[naming];
  const activeName = { current: 'name', legacy: 'legacyName', tagged: 'taggedName' }[naming];
  const queues = catalog.queues.map((q) => ({ ...q, active: q[activeName] }));
  // bullmq takes options for one node, a client for a cluster (created unconnected: bullmq connects it).
  const connection = redis.clusterNodes ? createRedis(redis, { lazyConnect: true }) : redis;
  return { catalog, connection, redis, prefix, naming, queueNames, queues };
}

/** Run `main`, print a one-line error (no stack) and exit non-zero on failure. */
function runMain(tool, main) {
  main().then(
    // Exit once main is done rather than when the event loop drains: with Sentinel, ioredis
    // 5.9's quit() leaves the failoverDetector's sentinel subscriptions open (ioredis #1362),
    // so a script whose queues and workers are all closed would otherwise never end.
    (code) => process.exit(typeof code === 'number' ? code : 0),
    (err) => {
      const msg = err instanceof ConfigError ? err.message : (err && err.message) || String(err);
      process.stderr.write(`${tool}: error: ${msg.split('\n')[0]}\n`);
      process.exit(err instanceof ConfigError ? 2 : 1);
    },
  );
}

module.exports = {
  ConfigError, loadCatalog, loadConfig, redisOptions, createRedis, describeRedis, hasHashTag, runMain, CATALOG_PATH,
};
