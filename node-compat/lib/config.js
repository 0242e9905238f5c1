'use strict';
// Settings for every Node process of bullwait, from the SAME environment variables the Python
// side reads (bullwait/settings.py), and the catalog that `bullwait catalog --json` wrote.
// A bad value throws a ConfigError whose message names the variable.
const fs = require('node:fs');
const path = require('node:path');

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

/** ioredis options for REDIS_URL, or REDIS_HOST/REDIS_PORT/REDIS_QUEUE_DB, plus credentials and TLS. */
function redisOptions(env = process.env) {
  let opts;
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
  if (env.REDIS_USERNAME && !opts.username) opts.username = env.REDIS_USERNAME;
  if (env.REDIS_PASSWORD && !opts.password) opts.password = env.REDIS_PASSWORD;
  if (env.REDIS_TLS_CA_FILE) {
    if (!fs.existsSync(env.REDIS_TLS_CA_FILE)) throw new ConfigError(`REDIS_TLS_CA_FILE: no such file ${JSON.stringify(env.REDIS_TLS_CA_FILE)}`);
    opts.tls = { ...(opts.tls || {}), ca: fs.readFileSync(env.REDIS_TLS_CA_FILE) };
  }
  // bullmq workers need this; for queues it is harmless.
  opts.maxRetriesPerRequest = null;
  return opts;
}

function describeRedis(opts) {
  if (opts.path) return `unix://${opts.path}`;
  return `${opts.tls ? 'rediss' : 'redis'}://${opts.host}:${opts.port}/${opts.db}`;
}

/** Everything a Node process needs: connection, prefix, queue names under the chosen naming. */
function loadConfig(env = process.env) {
  const catalog = loadCatalog();
  const prefix = env.BULLMQ_PREFIX || 'bull';
  if (/\s/.test(prefix)) throw new ConfigError('BULLMQ_PREFIX: must not contain white space');
  const naming = (env.BULLWAIT_QUEUE_NAMES || 'current').toLowerCase();
  if (naming !== 'current' && naming !== 'legacy') {
    throw new ConfigError(`BULLWAIT_QUEUE_NAMES: must be current or legacy (got ${JSON.stringify(env.BULLWAIT_QUEUE_NAMES)})`);
  }
  const queueNames = naming === 'legacy' ? catalog.legacyQueueNames : catalog.queueNames;
  const queues = catalog.queues.map((q) => ({ ...q, active: naming === 'legacy' ? q.legacyName : q.name }));
  return { catalog, connection: redisOptions(env), prefix, naming, queueNames, queues };
}

/** Run `main`, print a one-line error (no stack) and exit non-zero on failure. */
function runMain(tool, main) {
  main().then(
    (code) => { if (typeof code === 'number') process.exitCode = code; },
    (err) => {
      const msg = err instanceof ConfigError ? err.message : (err && err.message) || String(err);
      process.stderr.write(`${tool}: error: ${msg.split('\n')[0]}\n`);
      process.exit(err instanceof ConfigError ? 2 : 1);
    },
  );
}

module.exports = { ConfigError, loadCatalog, loadConfig, redisOptions, describeRedis, runMain, CATALOG_PATH };
