/*
 * The RQ workers page's data functions: formatting, sorting, levels, parsing what our CLI and
 * journalctl print. Pure (no DOM, no cockpit), so that Node's test runner checks them
 * (tests/unit/cockpit/data.test.js); a plain script: window.RqData in the browser, module.exports in Node.
 */
(function (root) {
    "use strict";

    const LEVELS = ["OK", "WARNING", "CRITICAL", "UNKNOWN"];
    const LIVE = ["queued", "started", "scheduled", "deferred"];
    const INSTANCE_RE = /rq-worker@([^.@]+)(?:\.service)?$/;

    /** Seconds as people read them: "42 s", "3 min 5 s", "2 h 7 min", "3 d 4 h"; "-" for none. */
    function duration(seconds) {
        if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0)
            return "-";
        const s = Math.floor(seconds);
        if (s < 60)
            return s + " s";
        if (s < 3600)
            return Math.floor(s / 60) + " min" + (s % 60 ? " " + (s % 60) + " s" : "");
        if (s < 86400)
            return Math.floor(s / 3600) + " h" + (s % 3600 >= 60 ? " " + Math.floor((s % 3600) / 60) + " min" : "");
        return Math.floor(s / 86400) + " d" + (s % 86400 >= 3600 ? " " + Math.floor((s % 86400) / 3600) + " h" : "");
    }

    /** An ISO 8601 instant as "2026-03-01 12:00:05 UTC" (the CLI's times are UTC); "-" for none or garbage. */
    function timestamp(iso) {
        const ms = iso ? Date.parse(iso) : NaN;
        if (isNaN(ms))
            return "-";
        return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    }

    /** How long ago an ISO 8601 instant was, at ``nowMs``: "3 min 5 s ago"; "-" for none. */
    function ago(iso, nowMs) {
        const ms = iso ? Date.parse(iso) : NaN;
        if (isNaN(ms))
            return "-";
        return duration(Math.max(0, (nowMs - ms) / 1000)) + " ago";
    }

    /** A verdict's level (OK, WARNING, CRITICAL, UNKNOWN, or the number status --check exits with) as its
     *  name; anything else is UNKNOWN. */
    function levelName(level) {
        if (typeof level === "number")
            return LEVELS[level] || "UNKNOWN";
        const name = String(level || "").toUpperCase();
        return LEVELS.includes(name) ? name : "UNKNOWN";
    }

    /** The CSS class that colours a level: level-ok, level-warning, level-critical, level-unknown. */
    function levelClass(level) {
        return "level-" + levelName(level).toLowerCase();
    }

    /** The instance of ``rq-worker@3.service`` or of a worker named ``host.rq-worker@3``: "3"; null for others. */
    function instanceOf(name) {
        const m = INSTANCE_RE.exec(String(name || ""));
        return m ? m[1] : null;
    }

    /** The systemd unit a worker of ``status --json`` runs in: its ``unit``, else from its name; null if none. */
    function unitName(worker) {
        if (worker.unit)
            return worker.unit;
        const n = instanceOf(worker.name);
        return n === null ? null : "rq-worker@" + n + ".service";
    }

    /** Instances in number order ("2" before "10"), names that are not numbers after them, by name; none last. */
    function compareInstances(a, b) {
        if ((a === null || a === undefined) !== (b === null || b === undefined))
            return a === null || a === undefined ? 1 : -1;
        const na = /^\d+$/.test(a || "") ? Number(a) : null;
        const nb = /^\d+$/.test(b || "") ? Number(b) : null;
        if (na !== null && nb !== null)
            return na - nb;
        if (na !== null || nb !== null)
            return na !== null ? -1 : 1;
        return String(a || "").localeCompare(String(b || ""));
    }

    /** Workers by host, then instance number, then name (a copy). */
    function sortWorkers(workers) {
        return workers.slice().sort((a, b) =>
            String(a.host || "").localeCompare(String(b.host || "")) ||
            compareInstances(instanceOf(a.unit || a.name), instanceOf(b.unit || b.name)) ||
            String(a.name).localeCompare(String(b.name)));
    }

    /** Queues by name, then key prefix (a copy). */
    function sortQueues(queues) {
        const key = q => [String(q.name), String(q.key_prefix || "")];
        return queues.slice().sort((a, b) => key(a)[0].localeCompare(key(b)[0]) || key(a)[1].localeCompare(key(b)[1]));
    }

    /**
     * ``rq-worker-service status --json``: one report, or with several key prefixes
     * ``{"status": ..., "prefixes": [report, ...]}``. Returns the worst level, the verdict line (each prefix's,
     * named, when there are several), the reports, and their queues and workers together (each tagged with
     * its ``key_prefix``), sorted.
     */
    function parseStatus(text) {
        const data = JSON.parse(text);
        if (!data || typeof data !== "object")
            throw new Error("status --json printed no report");
        const reports = Array.isArray(data.prefixes) ? data.prefixes : [data];
        if (!reports.every(r => r && Array.isArray(r.queues) && Array.isArray(r.workers)))
            throw new Error("status --json printed a report without queues or workers");
        const level = levelName(data.status !== undefined ? data.status
            : Math.max(...reports.map(r => LEVELS.indexOf(levelName(r.status)))));
        const verdict = reports.length === 1
            ? reports[0].verdict
            : reports.map(r => "key prefix " + r.key_prefix + ": " + r.verdict).join(" | ");
        const tag = (r, items) => items.map(item => Object.assign({ key_prefix: r.key_prefix }, item));
        return {
            level,
            verdict: verdict || level,
            reports,
            queues: sortQueues([].concat(...reports.map(r => tag(r, r.queues)))),
            workers: sortWorkers([].concat(...reports.map(r => tag(r, r.workers)))),
            autoscalers: [].concat(...reports.map(r => r.autoscalers || [])),
            fenced: [].concat(...reports.map(r => tag(r, r.fenced || []))),
            abandoned: [].concat(...reports.map(r => tag(r, r.abandoned || []))),
            suspended: reports.filter(r => r.suspended).map(r => r.key_prefix),
        };
    }

    /** ``failed --json``: its rows, checked to be a list. */
    function parseFailed(text) {
        const rows = JSON.parse(text);
        if (!Array.isArray(rows))
            throw new Error("failed --json printed no list");
        return rows;
    }

    /** The queues that have failed jobs, by name: from the status queues' counts and the failed rows. */
    function failedQueues(queues, rows) {
        const names = new Set(queues.filter(q => q.failed > 0).map(q => q.name));
        rows.forEach(r => names.add(r.queue));
        return Array.from(names).sort();
    }

    /** "1 job", "3 jobs". */
    function count(n, noun) {
        return n + " " + noun + (n === 1 ? "" : "s");
    }

    /** The last non-empty line of a traceback (the exception and its message), or null. */
    function excLastLine(traceback) {
        const lines = String(traceback || "").split(/\r?\n/).map(l => l.trim()).filter(l => l);
        return lines.length ? lines[lines.length - 1] : null;
    }

    /** The smallest instance number from 1 that none of the unit names uses ("rq-worker@N.service"). */
    function nextFreeInstance(unitNames) {
        const used = new Set(unitNames.map(instanceOf).filter(n => n !== null && /^\d+$/.test(n)).map(Number));
        let n = 1;
        while (used.has(n))
            n++;
        return n;
    }

    /**
     * This host's instances from systemd's ListUnitsByPatterns (name, description, load, active, sub, ...)
     * and ListUnitFilesByPatterns (path, state) replies, with each instance's UnitFileState in ``fileStates``
     * (name → state): [{unit, instance, active, enabled}] in instance order, the template left out. systemd
     * lists loaded units only, and instances not at all as files: the ``known`` names (seen before on the
     * page) stay listed, inactive, once systemd has unloaded them.
     */
    function instances(units, files, fileStates, known) {
        const active = {};
        units.forEach(u => { active[u[0]] = u[3] });
        files.map(f => String(f[0]).split("/").pop()).concat(known || []).forEach(name => {
            if (!(name in active))
                active[name] = "inactive";
        });
        return Object.keys(active)
                .filter(name => instanceOf(name) !== null)
                .map(name => ({ unit: name, instance: instanceOf(name), active: active[name], enabled: (fileStates || {})[name] || "unknown" }))
                .sort((a, b) => compareInstances(a.instance, b.instance));
    }

    /** Whether a job of this status may still log: its journal is followed live while it is. */
    function isLive(status) {
        return LIVE.includes(String(status || ""));
    }

    /** Text split into whole lines, with the unfinished rest kept for the next chunk of a stream. */
    function takeLines(rest, chunk) {
        const lines = (rest + chunk).split("\n");
        return { lines: lines.slice(0, -1).filter(l => l.trim()), rest: lines[lines.length - 1] };
    }

    /** A field of ``journalctl -o json``: text, bytes (non-UTF-8 or binary: an array of numbers), or absent. */
    function journalText(value) {
        if (value === null || value === undefined)
            return "";
        if (Array.isArray(value)) {
            if (value.every(v => typeof v === "number"))
                return new TextDecoder().decode(new Uint8Array(value));
            return value.map(journalText).join(" ");  // a field logged twice: both values
        }
        return String(value);
    }

    /** One ``journalctl -o json`` line as a record: unit, message, time (ISO 8601), priority, cursor. */
    function journalRecord(line) {
        const e = JSON.parse(line);
        const us = Number(e.__REALTIME_TIMESTAMP);
        return {
            cursor: e.__CURSOR || null,
            unit: journalText(e._SYSTEMD_UNIT || e.UNIT),
            message: journalText(e.MESSAGE),
            time: isFinite(us) && us > 0 ? new Date(us / 1000).toISOString() : null,
            priority: e.PRIORITY === undefined ? null : Number(journalText(e.PRIORITY)),
            host: journalText(e._HOSTNAME),
        };
    }

    /** The one line to show for a failed command: its stderr's last line (our CLI prints one error line
     *  last, after any warning), else cockpit's problem text, else what was thrown. */
    function errorLine(ex, fallback) {
        const text = String((ex && (ex.message || ex.problem)) || ex || fallback || "failed");
        return excLastLine(text) || String(fallback || "failed");
    }

    const RqData = {
        duration, timestamp, ago, levelName, levelClass, instanceOf, unitName, compareInstances, sortWorkers,
        sortQueues, parseStatus, parseFailed, failedQueues, excLastLine, nextFreeInstance, instances, isLive,
        takeLines, journalText, journalRecord, errorLine, count,
    };
    if (typeof module === "object" && module.exports)
        module.exports = RqData;
    else
        root.RqData = RqData;
})(typeof window !== "undefined" ? window : globalThis);
