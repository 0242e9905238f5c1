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

/**
 * The environment without blank values: an empty or white-space-only variable is unset, as on the
 * Python side (a `KEY=` line or an empty `${VAR}` in a deployment gets the default on both).
 */
function setValues(env) {
  return Object.fromEntries(Object.entries(env).filter(([, v]) => typeof v === 'string' && v.trim() !== ''));
}

const MAX_DB = 2 ** 31 - 1;

/** Decimal digits only, as bullwait/settings.py reads them (Number() alone takes `0x1F` and `1e3`). */
function intEnv(env, name, fallback, min, max) {
  const raw = env[name];
  if (raw === undefined) return fallback;
  const text = raw.trim();
  if (!/^[0-9]+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new ConfigError(`${name}: must be a whole number from ${min} to ${max} (got ${JSON.stringify(raw)})`);
  }
  return Number(text);
}

// REDIS_SENTINELS and REDIS_CLUSTER_NODES are refused with the same words by bullwait/settings.py
// (tests/compat/test_compat_settings.py runs both on one table): keep the two in step.
const SENTINELS_FORM = 'host:port,host:port,... e.g. 10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379';
const CLUSTER_FORM = 'host:port,host:port,... e.g. 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000';
// A host name or IPv4 address, or an IPv6 one (optionally with a zone) in brackets. Anything else
// ('?', '#', ';', white space, ...) is a typo or part of a URL, refused rather than looked up.
const NODE_HOST = /^(?:([A-Za-z0-9._-]+)|\[([0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9._-]+)?)\])$/;
// BullMQ's prefix on a cluster when BULLMQ_PREFIX is unset: the tag puts every queue's keys on one slot.
const CLUSTER_DEFAULT_PREFIX = '{bull}';
// ... and with BULLWAIT_QUEUE_NAMES=tagged: untagged, so each queue's own tag places its keys.
const CLUSTER_TAGGED_DEFAULT_PREFIX = 'bull';
const NAMINGS = ['current', 'legacy', 'tagged'];

/** REDIS_SENTINELS or REDIS_CLUSTER_NODES: `host:port` or `[v6]:port` entries, duplicates dropped. */
function parseNodes(env, name) {
  const [form, port, loginHint] = name === 'REDIS_SENTINELS'
    ? [SENTINELS_FORM, 26379, 'sentinel credentials go in REDIS_SENTINEL_USERNAME/REDIS_SENTINEL_PASSWORD']
    : [CLUSTER_FORM, 7000, 'credentials go in REDIS_USERNAME/REDIS_PASSWORD'];
  const nodes = new Map();
  env[name].split(',').forEach((entry, i) => {
    const node = parseNode(entry.trim(), i + 1, name, form, port, loginHint);
    nodes.set(`${node.host}\n${node.port}`, node);
  });
  return [...nodes.values()];
}

/** One entry; `n` (1-based) names it in messages. */
function parseNode(entry, n, name, form, examplePort, loginHint) {
  if (!entry) throw new ConfigError(`${name}: entry ${n} is empty (a stray comma?); write ${form}`);
  if (entry.includes('://') || entry.includes('@')) { // may hold a password: never repeated
    throw new ConfigError(`${name}: entry ${n} is a URL or holds a login, not host:port; write ${form} (${loginHint})`);
  }
  const shown = `${name}: entry ${n} ${JSON.stringify(entry.slice(0, 60))}`;
  const colon = entry.lastIndexOf(':');
  const host = colon >= 0 ? entry.slice(0, colon) : '';
  const port = colon >= 0 ? entry.slice(colon + 1) : '';
  if (host.includes(':') && !host.startsWith('[')) {
    // `::1:7000` could be [::1]:7000 or [::1:7000] with the port left out: not guessed.
    throw new ConfigError(`${shown} has more than one ':'; put an IPv6 address in brackets, e.g. [::1]:${examplePort}`);
  }
  const match = colon >= 0 ? NODE_HOST.exec(host) : null;
  if (!match) {
    throw new ConfigError(`${shown} is not host:port (a host is letters, digits, '.', '-', '_'); write ${form}`);
  }
  if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    throw new ConfigError(`${shown}: the port must be a number from 1 to 65535; write ${form}`);
  }
  return { host: match[1] || match[2], port: Number(port) };
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
  const db = intEnv(env, 'REDIS_QUEUE_DB', 0, 0, MAX_DB);
  if (db !== 0) {
    throw new ConfigError(`REDIS_QUEUE_DB: a Redis Cluster has database 0 only (got ${db}); set REDIS_QUEUE_DB=0 or unset it`);
  }
  return { clusterNodes: parseNodes(env, 'REDIS_CLUSTER_NODES'), db: 0 };
}

/**
 * ioredis options for Sentinel (REDIS_SENTINELS), as the Python side reads the same variables:
 * the sentinels have their own login (REDIS_SENTINEL_USERNAME/PASSWORD), the data nodes keep
 * REDIS_USERNAME/PASSWORD and REDIS_QUEUE_DB. REDIS_HOST/REDIS_PORT are not used.
 */
function sentinelOptions(env) {
  const opts = {
    sentinels: parseNodes(env, 'REDIS_SENTINELS'),
    name: env.REDIS_SENTINEL_MASTER || 'mymaster',
    db: intEnv(env, 'REDIS_QUEUE_DB', 1, 0, MAX_DB),
    // Subscribe to the sentinels' +switch-master and reconnect at once, instead of writing to
    // a demoted master until Sentinel reconfigures it (seconds of lost writes).
    failoverDetector: true,
  };
  if (env.REDIS_SENTINEL_USERNAME) opts.sentinelUsername = env.REDIS_SENTINEL_USERNAME;
  if (env.REDIS_SENTINEL_PASSWORD) opts.sentinelPassword = env.REDIS_SENTINEL_PASSWORD;
  return opts;
}

const URL_FORM = 'redis://[user:password@]host:port/db';
const PERCENT_HINT = 'percent-encode them (# as %23, / as %2F, ? as %3F, @ as %40, % as %25)';
// The options after '?' that bullwait/settings.py accepts (redis-py's URL options); the others are
// refused on both sides. Here db, username and password are read and the rest left to ioredis's
// defaults. tests/compat/test_compat_settings.py checks this list against the Python one.
const URL_OPTIONS = new Set([
  'db', 'username', 'password', 'health_check_interval', 'legacy_responses', 'max_connections', 'protocol',
  'retry_on_timeout', 'socket_connect_timeout', 'socket_keepalive', 'socket_read_size', 'socket_timeout',
  'ssl_ca_certs', 'ssl_cert_reqs', 'ssl_certfile', 'ssl_check_hostname', 'ssl_exclude_verify_flags',
  'ssl_include_verify_flags', 'ssl_keyfile', 'ssl_min_version',
]);

/**
 * REDIS_URL checked part by part as bullwait/settings.py's parse_redis_url does, so the two sides
 * refuse the same URLs and read the same host, db and login from the others. WHATWG URL alone
 * would drop a '#...' (an unencoded '#' in a password), strip a newline, ignore ?db= and take
 * `redis:///1` for localhost. A message never repeats the URL: it may hold a password.
 */
function parseRedisUrl(url) {
  const fail = (msg) => new ConfigError(`REDIS_URL: ${msg}`);
  if (/[\s\x00-\x1f\x7f]/.test(url)) {
    throw fail('contains white space or a control character (a newline from a secret file?); remove it');
  }
  const sep = url.indexOf('://');
  const scheme = sep >= 0 ? url.slice(0, sep).toLowerCase() : '';
  const rest = sep >= 0 ? url.slice(sep + 3) : url;
  if (sep >= 0 && scheme.includes('sentinel')) {
    throw fail('a Sentinel URL is not read here: unset REDIS_URL and set REDIS_SENTINELS=host:port,... '
      + 'and REDIS_SENTINEL_MASTER (docs/sentinel.md)');
  }
  if (!['redis', 'rediss', 'unix'].includes(scheme)) throw fail(`must start with redis://, rediss:// or unix://, as in ${URL_FORM}`);
  // A query (after a path) may hold '@' (`?password=a@b`), and so may a socket path.
  const queryAt = rest.indexOf('?');
  const tail = queryAt >= 0 && rest.slice(0, queryAt).includes('/') ? rest.slice(0, queryAt) : rest;
  const at = tail.lastIndexOf('@');
  if (scheme !== 'unix' && at >= 0 && /[/?#]/.test(tail.slice(0, at))) {
    throw fail(`the user name or password holds '/', '?' or '#', which end a URL's login part: ${PERCENT_HINT}`);
  }
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    throw fail(hostPortProblem(rest.split('/')[0].split('?')[0].split('@').pop()));
  }
  if (parsed.hash) throw fail("has a '#' (a URL fragment); if it belongs to the password, write it as %23");
  const query = {};
  for (const [name, value] of parsed.searchParams) {
    if (!URL_OPTIONS.has(name)) {
      throw fail(`unknown option ${JSON.stringify(name.slice(0, 40))} after '?'; only redis-py's URL options work `
        + '(db, socket_timeout, socket_connect_timeout, ssl_cert_reqs, ...)');
    }
    query[name] = value;
  }
  let queryDb;
  if (query.db !== undefined) {
    if (!/^[0-9]+$/.test(query.db.trim()) || Number(query.db) > MAX_DB) {
      throw fail(`?db= must be a database number from 0 to ${MAX_DB}`);
    }
    queryDb = Number(query.db);
  }
  const login = {};
  if (parsed.username) login.username = decodeURIComponent(parsed.username);
  else if (query.username !== undefined) login.username = query.username;
  if (parsed.password) login.password = decodeURIComponent(parsed.password);
  else if (query.password !== undefined) login.password = query.password;
  if (scheme === 'unix') {
    if (!parsed.pathname || parsed.pathname === '/') {
      throw fail('unix:// needs the socket\'s path, e.g. unix:///run/redis/redis.sock?db=1');
    }
    return { path: decodeURIComponent(parsed.pathname), db: queryDb || 0, ...login };
  }
  if (!parsed.hostname) throw fail(`names no host; use ${URL_FORM}, e.g. redis://localhost:6379/1`);
  if (parsed.port === '0') throw fail('port must be a number from 1 to 65535 (got 0)');
  const path = parsed.pathname.replace(/^\//, '');
  let db;
  if (path) {
    if (!/^[0-9]+$/.test(path) || Number(path) > MAX_DB) {
      let shown;
      try { shown = decodeURIComponent(path); } catch { shown = path; }
      throw fail(`the path ${JSON.stringify(shown.slice(0, 40))} is not a database number; `
        + 'end the URL with /<db>, e.g. redis://localhost:6379/1');
    }
    db = Number(path);
  }
  if (queryDb !== undefined && db !== undefined && queryDb !== db) {
    throw fail(`names two databases (${db} in the path, ${queryDb} in ?db=); give it once, e.g. ${URL_FORM}`);
  }
  // WHATWG keeps an IPv6 address's brackets in `hostname`; ioredis wants the bare address.
  const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1');
  const opts = { host, port: Number(parsed.port || 6379), db: queryDb ?? db ?? 0, ...login };
  if (scheme === 'rediss') opts.tls = {};
  return opts;
}

/** Why the host:port after `scheme://` (login removed) could not be read. */
function hostPortProblem(hostport) {
  if ((hostport.match(/\[/g) || []).length !== (hostport.match(/\]/g) || []).length) {
    return `an IPv6 address needs both brackets, e.g. redis://[::1]:6379/1 (${URL_FORM})`;
  }
  if (!hostport.includes('[') && (hostport.match(/:/g) || []).length > 1) {
    return `an IPv6 address goes in brackets, e.g. redis://[::1]:6379/1 (${URL_FORM})`;
  }
  const port = (hostport.includes(']') ? hostport.slice(hostport.lastIndexOf(']') + 1) : hostport).split(':').pop();
  if (/^[0-9]+$/.test(port)) return `port must be a number from 1 to 65535 (got ${Number(port)})`;
  return `the port is not a number; use ${URL_FORM} (if ':' belongs to a password, add the '@' before the host)`;
}

/**
 * Each variable on its own, whether or not it is used, in the order bullwait/settings.py checks
 * its fields (before how they combine), so that both sides refuse a value and name the same one first.
 */
function checkFields(env) {
  if (env.REDIS_URL) parseRedisUrl(env.REDIS_URL);
  if (env.REDIS_HOST !== undefined && /[\s/@?#]/.test(env.REDIS_HOST)) {
    throw new ConfigError('REDIS_HOST: must be a host name or address only; put a URL in REDIS_URL');
  }
  intEnv(env, 'REDIS_PORT', 6379, 1, 65535);
  intEnv(env, 'REDIS_QUEUE_DB', 1, 0, MAX_DB);
  if (env.REDIS_SENTINELS) parseNodes(env, 'REDIS_SENTINELS');
  if (env.REDIS_SENTINEL_MASTER !== undefined && /\s/.test(env.REDIS_SENTINEL_MASTER)) {
    throw new ConfigError("REDIS_SENTINEL_MASTER: must be the master's name as the sentinels know it "
      + '(`sentinel monitor <name> ...`), without white space');
  }
  if (env.REDIS_CLUSTER_NODES) parseNodes(env, 'REDIS_CLUSTER_NODES');
  if (env.BULLMQ_PREFIX !== undefined && /\s/.test(env.BULLMQ_PREFIX)) {
    throw new ConfigError('BULLMQ_PREFIX: must not contain white space');
  }
  if (env.BULLWAIT_QUEUE_NAMES !== undefined && !NAMINGS.includes(env.BULLWAIT_QUEUE_NAMES.toLowerCase())) {
    throw new ConfigError(`BULLWAIT_QUEUE_NAMES: must be current, legacy or tagged (got ${JSON.stringify(env.BULLWAIT_QUEUE_NAMES)})`);
  }
}

/**
 * ioredis options: a cluster (REDIS_CLUSTER_NODES), Sentinel (REDIS_SENTINELS), or one node (REDIS_URL, or REDIS_HOST/REDIS_PORT/
 * REDIS_QUEUE_DB), plus credentials and TLS.
 */
function redisOptions(rawEnv = process.env) {
  const env = setValues(rawEnv);
  checkFields(env);
  let opts;
  if (env.REDIS_CLUSTER_NODES && (env.REDIS_URL || env.REDIS_SENTINELS)) {
    const other = env.REDIS_URL ? 'REDIS_URL' : 'REDIS_SENTINELS';
    throw new ConfigError(`${other} and REDIS_CLUSTER_NODES are both set, naming two Redis topologies: `
      + `keep REDIS_CLUSTER_NODES for a cluster, or ${other} and unset REDIS_CLUSTER_NODES`);
  }
  if (env.REDIS_CLUSTER_NODES) return withCredentialsAndTls(clusterOptions(env), env);
  if (env.REDIS_SENTINELS && env.REDIS_URL) {
    throw new ConfigError('REDIS_URL and REDIS_SENTINELS are both set, naming two Redis topologies: '
      + 'keep REDIS_SENTINELS (with REDIS_QUEUE_DB) for Sentinel, or REDIS_URL and unset REDIS_SENTINELS');
  }
  if (env.REDIS_SENTINELS) return withCredentialsAndTls(sentinelOptions(env), env);
  if (env.REDIS_URL) {
    opts = parseRedisUrl(env.REDIS_URL);
  } else {
    opts = {
      host: env.REDIS_HOST || 'localhost',
      port: intEnv(env, 'REDIS_PORT', 6379, 1, 65535),
      db: intEnv(env, 'REDIS_QUEUE_DB', 1, 0, MAX_DB),
    };
  }
  return withCredentialsAndTls(opts, env);
}

function withCredentialsAndTls(opts, env) {
  if (env.REDIS_USERNAME && !opts.username) opts.username = env.REDIS_USERNAME;
  if (env.REDIS_PASSWORD && !opts.password) opts.password = env.REDIS_PASSWORD;
  if (env.REDIS_TLS_CA_FILE) {
    if (!fs.statSync(env.REDIS_TLS_CA_FILE, { throwIfNoEntry: false })?.isFile()) throw new ConfigError(`REDIS_TLS_CA_FILE: no such file ${JSON.stringify(env.REDIS_TLS_CA_FILE)}`);
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
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return `${opts.tls ? 'rediss' : 'redis'}://${host}:${opts.port}/${opts.db}`;
}

/** Everything a Node process needs: connection, prefix, queue names under the chosen naming. */
function loadConfig(rawEnv = process.env) {
  const env = setValues(rawEnv);
  const catalog = loadCatalog();
  const redis = redisOptions(env);
  const naming = (env.BULLWAIT_QUEUE_NAMES || 'current').toLowerCase();
  const clusterDefault = naming === 'tagged' ? CLUSTER_TAGGED_DEFAULT_PREFIX : CLUSTER_DEFAULT_PREFIX;
  const prefix = env.BULLMQ_PREFIX || (redis.clusterNodes ? clusterDefault : 'bull');
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
  ConfigError, loadCatalog, loadConfig, redisOptions, URL_OPTIONS, createRedis, describeRedis, hasHashTag, runMain, CATALOG_PATH,
};
