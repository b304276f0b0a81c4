// The page's data functions (cockpit/data.js), with Node's own runner: `node --test` (no npm packages).
// Run by tests/unit/test_cockpit_data.py.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const D = require(path.join(__dirname, "..", "..", "..", "cockpit", "data.js"));

function report(prefix, status, extra) {
    return Object.assign({
        key_prefix: prefix, status, level: ["OK", "WARNING", "CRITICAL", "UNKNOWN"].indexOf(status),
        verdict: status + ": something", problems: [], redis: "redis://:***@127.0.0.1:6379/0",
        queues: [], workers: [], abandoned: [], fenced: [], autoscalers: [], suspended: false, cron: null,
    }, extra || {});
}

test("durations read as people say them", () => {
    assert.equal(D.duration(0), "0 s");
    assert.equal(D.duration(0.7), "0 s");
    assert.equal(D.duration(42.9), "42 s");
    assert.equal(D.duration(60), "1 min");
    assert.equal(D.duration(185), "3 min 5 s");
    assert.equal(D.duration(3599), "59 min 59 s");
    assert.equal(D.duration(3600), "1 h");
    assert.equal(D.duration(7620), "2 h 7 min");
    assert.equal(D.duration(86400 * 3 + 3600 * 4 + 59), "3 d 4 h");
    for (const none of [null, undefined, NaN, -1, Infinity])
        assert.equal(D.duration(none), "-");
});

test("timestamps are shown in UTC, ages from now", () => {
    assert.equal(D.timestamp("2026-03-01T12:00:05+00:00"), "2026-03-01 12:00:05 UTC");
    assert.equal(D.timestamp("2026-03-01T13:00:05+01:00"), "2026-03-01 12:00:05 UTC");
    assert.equal(D.timestamp(null), "-");
    assert.equal(D.timestamp("yesterday-ish"), "-");
    const now = Date.parse("2026-03-01T12:03:10Z");
    assert.equal(D.ago("2026-03-01T12:00:05+00:00", now), "3 min 5 s ago");
    assert.equal(D.ago(null, now), "-");
});

test("a level is one of four names and its CSS class", () => {
    assert.equal(D.levelClass("OK"), "level-ok");
    assert.equal(D.levelClass("warning"), "level-warning");
    assert.equal(D.levelClass(2), "level-critical");
    assert.equal(D.levelClass(3), "level-unknown");
    assert.equal(D.levelClass("bogus"), "level-unknown");
    assert.equal(D.levelClass(undefined), "level-unknown");
    assert.equal(D.levelName(1), "WARNING");
});

test("instances and units of workers", () => {
    assert.equal(D.instanceOf("rq-worker@12.service"), "12");
    assert.equal(D.instanceOf("web1.example.org.rq-worker@3"), "3");
    assert.equal(D.instanceOf("some-other-worker"), null);
    assert.equal(D.instanceOf("rq-worker.target"), null);
    assert.equal(D.unitName({ name: "h.rq-worker@4", unit: null }), "rq-worker@4.service");
    assert.equal(D.unitName({ name: "h.rq-worker@4", unit: "rq-worker@4.service" }), "rq-worker@4.service");
    assert.equal(D.unitName({ name: "foreign", unit: null }), null);
});

test("workers sort by host, then instance number (2 before 10), then name", () => {
    const workers = [
        { name: "b.rq-worker@1", host: "b", unit: "rq-worker@1.service" },
        { name: "a.rq-worker@10", host: "a", unit: "rq-worker@10.service" },
        { name: "zz-foreign", host: "a", unit: null },
        { name: "a.rq-worker@2", host: "a", unit: "rq-worker@2.service" },
        { name: "a.rq-worker@x", host: "a", unit: "rq-worker@x.service" },
    ];
    assert.deepEqual(D.sortWorkers(workers).map(w => w.name),
                     ["a.rq-worker@2", "a.rq-worker@10", "a.rq-worker@x", "zz-foreign", "b.rq-worker@1"]);
    assert.equal(workers[0].name, "b.rq-worker@1", "the input is left as it was");
});

test("counts say job or jobs", () => {
    assert.equal(D.count(1, "job"), "1 job");
    assert.equal(D.count(0, "failed job"), "0 failed jobs");
    assert.equal(D.count(3, "job"), "3 jobs");
});

test("queues sort by name", () => {
    assert.deepEqual(D.sortQueues([{ name: "low" }, { name: "default" }, { name: "high" }]).map(q => q.name),
                     ["default", "high", "low"]);
});

test("status --json with one key prefix", () => {
    const one = report("rq", "WARNING", {
        verdict: "WARNING: 1 jobs queued in reports, which no live worker listens to",
        queues: [{ name: "reports", queued: 1 }, { name: "default", queued: 3 }],
        workers: [{ name: "h.rq-worker@10", host: "h", unit: "rq-worker@10.service" },
                  { name: "h.rq-worker@2", host: "h", unit: "rq-worker@2.service" }],
    });
    const s = D.parseStatus(JSON.stringify(one));
    assert.equal(s.level, "WARNING");
    assert.equal(s.verdict, "WARNING: 1 jobs queued in reports, which no live worker listens to");
    assert.deepEqual(s.queues.map(q => q.name), ["default", "reports"]);
    assert.deepEqual(s.workers.map(w => w.name), ["h.rq-worker@2", "h.rq-worker@10"]);
    assert.equal(s.workers[0].key_prefix, "rq");
});

test("status --json with two key prefixes: the worst level, each verdict named, all queues and workers", () => {
    const both = {
        status: "CRITICAL",
        prefixes: [
            report("rq", "OK", { verdict: "OK: 1 workers (0 busy), 0 queued, 0 failed",
                                 queues: [{ name: "default", queued: 0 }],
                                 workers: [{ name: "h.rq-worker@1", host: "h", unit: "rq-worker@1.service" }] }),
            report("billing", "CRITICAL", { verdict: "CRITICAL: no live worker",
                                            queues: [{ name: "default", queued: 7 }, { name: "invoices", queued: 2 }],
                                            workers: [], fenced: [{ worker: "x", host: "g", by: "y", ago: 3, jobs: [] }],
                                            suspended: true }),
        ],
    };
    const s = D.parseStatus(JSON.stringify(both));
    assert.equal(s.level, "CRITICAL");
    assert.equal(s.verdict, "key prefix rq: OK: 1 workers (0 busy), 0 queued, 0 failed | " +
                            "key prefix billing: CRITICAL: no live worker");
    assert.deepEqual(s.queues.map(q => [q.name, q.key_prefix, q.queued]),
                     [["default", "billing", 7], ["default", "rq", 0], ["invoices", "billing", 2]]);
    assert.deepEqual(s.workers.map(w => w.key_prefix), ["rq"]);
    assert.deepEqual(s.fenced.map(f => f.key_prefix), ["billing"]);
    assert.deepEqual(s.suspended, ["billing"]);
});

test("status --json that is not a report is an error, not a page of undefined", () => {
    assert.throws(() => D.parseStatus("{}"), /without queues or workers/);
    assert.throws(() => D.parseStatus("null"), /no report/);
    assert.throws(() => D.parseStatus("not json"));
    assert.throws(() => D.parseFailed("{}"), /no list/);
});

test("the exception's last line skips trailing blank lines", () => {
    assert.equal(D.excLastLine("Traceback (most recent call last):\n  File \"x\"\nValueError: bad\n"), "ValueError: bad");
    assert.equal(D.excLastLine("Traceback …\r\nKeyError: 'k'\r\n\r\n   \n\t\n"), "KeyError: 'k'");
    assert.equal(D.excLastLine(""), null);
    assert.equal(D.excLastLine(null), null);
    assert.equal(D.errorLine({ message: "rq-worker-service: no job with id 'x'\n" }), "rq-worker-service: no job with id 'x'");
    assert.equal(D.errorLine({ problem: "access-denied" }), "access-denied");
    assert.equal(D.errorLine(null, "status failed"), "status failed");
});

test("the next free instance is the smallest unused number, gaps first", () => {
    assert.equal(D.nextFreeInstance([]), 1);
    assert.equal(D.nextFreeInstance(["rq-worker@1.service", "rq-worker@2.service"]), 3);
    assert.equal(D.nextFreeInstance(["rq-worker@1.service", "rq-worker@3.service", "rq-worker@4.service"]), 2);
    assert.equal(D.nextFreeInstance(["rq-worker@2.service", "rq-worker@10.service"]), 1);
    assert.equal(D.nextFreeInstance(["rq-worker@1.service", "rq-worker@x.service", "rq-worker@.service"]), 2);
});

test("instances merge systemd's loaded units and unit files, in number order, without the template", () => {
    const units = [["rq-worker@10.service", "d", "loaded", "active", "running"],
                   ["rq-worker@2.service", "d", "loaded", "failed", "failed"]];
    const files = [["/usr/lib/systemd/system/rq-worker@.service", "indirect"],
                   ["/etc/systemd/system/rq-worker.target.wants/rq-worker@3.service", "enabled"]];
    const states = { "rq-worker@2.service": "enabled", "rq-worker@3.service": "enabled", "rq-worker@10.service": "disabled" };
    assert.deepEqual(D.instances(units, files, states), [
        { unit: "rq-worker@2.service", instance: "2", active: "failed", enabled: "enabled" },
        { unit: "rq-worker@3.service", instance: "3", active: "inactive", enabled: "enabled" },
        { unit: "rq-worker@10.service", instance: "10", active: "active", enabled: "disabled" },
    ]);
});

test("an instance seen before stays listed, inactive, once systemd unloaded it", () => {
    const units = [["rq-worker@1.service", "d", "loaded", "active", "running"]];
    assert.deepEqual(D.instances(units, [], {}, ["rq-worker@1.service", "rq-worker@5.service"]).map(r => [r.unit, r.active]),
                     [["rq-worker@1.service", "active"], ["rq-worker@5.service", "inactive"]]);
    assert.deepEqual(D.instances(units, [], {}).map(r => r.unit), ["rq-worker@1.service"]);
});

test("failed queues: from the counts and from the rows, by name", () => {
    assert.deepEqual(D.failedQueues([{ name: "b", failed: 2 }, { name: "a", failed: 0 }], [{ queue: "c" }, { queue: "b" }]),
                     ["b", "c"]);
    assert.deepEqual(D.failedQueues([], []), []);
});

test("a job is followed while it is queued, started, scheduled or deferred", () => {
    for (const s of ["queued", "started", "scheduled", "deferred"])
        assert.equal(D.isLive(s), true, s);
    for (const s of ["finished", "failed", "stopped", "canceled", undefined])
        assert.equal(D.isLive(s), false, String(s));
});

test("a stream's chunks become whole lines", () => {
    let r = D.takeLines("", '{"a":1}\n{"b"');
    assert.deepEqual(r, { lines: ['{"a":1}'], rest: '{"b"' });
    r = D.takeLines(r.rest, ':2}\n\n');
    assert.deepEqual(r, { lines: ['{"b":2}'], rest: "" });
});

test("journal records: text, bytes, the unit and the time", () => {
    const rec = D.journalRecord(JSON.stringify({
        __CURSOR: "s=1", __REALTIME_TIMESTAMP: "1772366405000000", _SYSTEMD_UNIT: "rq-worker@2.service",
        MESSAGE: "Job abc: started", PRIORITY: "6", _HOSTNAME: "h",
    }));
    assert.deepEqual(rec, { cursor: "s=1", unit: "rq-worker@2.service", message: "Job abc: started",
                            time: "2026-03-01T12:00:05.000Z", priority: 6, host: "h" });
    const bytes = D.journalRecord(JSON.stringify({ MESSAGE: [99, 97, 102, 195, 169] }));
    assert.equal(bytes.message, "café");
    assert.equal(bytes.unit, "");
    assert.equal(bytes.time, null);
    assert.equal(D.journalRecord(JSON.stringify({ MESSAGE: null })).message, "");
});
