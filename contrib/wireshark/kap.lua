-- Wireshark dissector for KAP/1, the keepalived keepalive protocol
-- (docs/protocol.md), and for the Go keepalive module's text protocol that
-- keepalived also serves (UDP 5001 registrations, 5002 probes and replies).
--
-- Install: copy to ~/.local/lib/wireshark/plugins/ (or the global plugin
-- directory), or load it for one run:
--   tshark -X lua_script:kap.lua -r capture.pcap
--   tshark -X lua_script:kap.lua -d udp.port==7400,kap -r capture.pcap
-- KAP/1 is decoded on UDP 7371 and, through "Decode As...", on any other port;
-- a heuristic also finds it elsewhere by its "KA" magic and version 1.
-- Display filter fields: kap.type, kap.diag, kap.session, kap.name, kap.seq,
-- kap.auth.key_id, kap.auth.mac, ...; legacy: kaplegacy.kind, kaplegacy.name, ...

local kap = Proto("kap", "KAP/1 keepalive protocol")

local HEADER_SIZE = 12
local TRAILER_SIZE = 36 -- key_id u32 + HMAC-SHA256
local FLAG_AUTH = 0x01

local types = {
    [1] = "REGISTER",
    [2] = "CHALLENGE",
    [3] = "ACCEPT",
    [4] = "REJECT",
    [5] = "PROBE",
    [6] = "ACK",
    [7] = "BYE",
}

local diags = {
    [0] = "none",
    [1] = "detection time expired",
    [2] = "invalid parameters",
    [3] = "not permitted",
    [4] = "server full",
    [5] = "shutting down",
    [6] = "removed by the operator",
    [7] = "unknown session",
    [8] = "restarting",
    [9] = "busy",
}

-- Body size of each type without the trailer; REGISTER adds name_len.
local body_sizes = { [1] = 38, [2] = 24, [3] = 24, [4] = 8, [5] = 16, [6] = 24, [7] = 8 }

local f = {
    magic = ProtoField.string("kap.magic", "Magic"),
    version = ProtoField.uint8("kap.version", "Version"),
    type = ProtoField.uint8("kap.type", "Type", base.DEC, types),
    flags = ProtoField.uint8("kap.flags", "Flags", base.HEX),
    flag_auth = ProtoField.bool("kap.flags.auth", "AUTH", 8, nil, FLAG_AUTH),
    flag_reserved = ProtoField.uint8("kap.flags.reserved", "Reserved", base.HEX, nil, 0xFE),
    diag = ProtoField.uint8("kap.diag", "Diag", base.DEC, diags),
    length = ProtoField.uint16("kap.length", "Length"),
    session = ProtoField.uint32("kap.session", "Session", base.HEX),
    nonce = ProtoField.uint64("kap.nonce", "Nonce", base.HEX),
    incarnation = ProtoField.uint64("kap.incarnation", "Incarnation", base.HEX),
    interval_ms = ProtoField.uint32("kap.interval_ms", "Interval (ms)"),
    probes = ProtoField.uint8("kap.probes", "Probes"),
    name_len = ProtoField.uint8("kap.name_len", "Name length"),
    cookie = ProtoField.bytes("kap.cookie", "Cookie"),
    cookie_zero = ProtoField.bool("kap.cookie_zero", "Cookie is zero (first REGISTER)"),
    name = ProtoField.string("kap.name", "Name"),
    epoch = ProtoField.uint64("kap.epoch", "Epoch", base.HEX),
    padding = ProtoField.bytes("kap.padding", "Padding"),
    seq = ProtoField.uint64("kap.seq", "Sequence"),
    tx_time = ProtoField.uint64("kap.tx_time", "Transmit time (opaque)"),
    key_id = ProtoField.uint32("kap.auth.key_id", "Key ID"),
    mac = ProtoField.bytes("kap.auth.mac", "HMAC-SHA256"),
    trailing = ProtoField.bytes("kap.trailing", "Unexpected bytes"),
}
kap.fields = f

local e = {
    bad_magic = ProtoExpert.new("kap.bad_magic", "Not KAP: wrong magic", expert.group.MALFORMED,
        expert.severity.ERROR),
    bad_version = ProtoExpert.new("kap.bad_version", "Unknown version", expert.group.MALFORMED,
        expert.severity.ERROR),
    bad_length = ProtoExpert.new("kap.bad_length", "Length field differs from the datagram size",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_flags = ProtoExpert.new("kap.bad_flags", "Reserved flag bits set (receiver drops it)",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_type = ProtoExpert.new("kap.bad_type", "Unknown message type", expert.group.MALFORMED,
        expert.severity.ERROR),
    bad_size = ProtoExpert.new("kap.bad_size", "Body size wrong for the type",
        expert.group.MALFORMED, expert.severity.ERROR),
    short = ProtoExpert.new("kap.short", "Shorter than the 12-byte header",
        expert.group.MALFORMED, expert.severity.ERROR),
    diag_note = ProtoExpert.new("kap.diag_note", "Diagnostic", expert.group.RESPONSE_CODE,
        expert.severity.NOTE),
}
kap.experts = e

local function add_u64(tree, field, buf)
    tree:add(field, buf, buf:uint64())
end

local function dissect_body(ty, body, tree, pinfo, info)
    if ty == 1 then -- REGISTER
        add_u64(tree, f.nonce, body(0, 8))
        add_u64(tree, f.incarnation, body(8, 8))
        tree:add(f.interval_ms, body(16, 4))
        tree:add(f.probes, body(20, 1))
        tree:add(f.name_len, body(21, 1))
        tree:add(f.cookie, body(22, 16))
        local zero = body(22, 16):bytes():tohex() == string.rep("00", 16)
        tree:add(f.cookie_zero, body(22, 16), zero):set_generated()
        local name_len = body(21, 1):uint()
        local name = ""
        if name_len > 0 then
            name = body(38, name_len):string()
            tree:add(f.name, body(38, name_len))
        end
        info = info .. string.format(" name=%s interval=%dms probes=%d%s", name,
            body(16, 4):uint(), body(20, 1):uint(), zero and "" or " (with cookie)")
    elseif ty == 2 then -- CHALLENGE
        add_u64(tree, f.nonce, body(0, 8))
        tree:add(f.cookie, body(8, 16))
    elseif ty == 3 then -- ACCEPT
        add_u64(tree, f.nonce, body(0, 8))
        add_u64(tree, f.epoch, body(8, 8))
        tree:add(f.interval_ms, body(16, 4))
        tree:add(f.probes, body(20, 1))
        tree:add(f.padding, body(21, 3))
        info = info .. string.format(" interval=%dms probes=%d", body(16, 4):uint(),
            body(20, 1):uint())
    elseif ty == 4 then -- REJECT
        add_u64(tree, f.nonce, body(0, 8))
    elseif ty == 5 then -- PROBE
        add_u64(tree, f.seq, body(0, 8))
        add_u64(tree, f.tx_time, body(8, 8))
        info = info .. " seq=" .. tostring(body(0, 8):uint64())
    elseif ty == 6 then -- ACK
        add_u64(tree, f.seq, body(0, 8))
        add_u64(tree, f.tx_time, body(8, 8))
        add_u64(tree, f.incarnation, body(16, 8))
        info = info .. " seq=" .. tostring(body(0, 8):uint64())
    elseif ty == 7 then -- BYE
        add_u64(tree, f.seq, body(0, 8))
        info = info .. " seq=" .. tostring(body(0, 8):uint64())
    end
    return info
end

-- Returns the number of bytes dissected, or 0 if this is not KAP/1.
local function dissect(buf, pinfo, root)
    local size = buf:len()
    pinfo.cols.protocol = "KAP"
    local tree = root:add(kap, buf(), "KAP/1 keepalive protocol")
    if size < HEADER_SIZE then
        tree:add_proto_expert_info(e.short)
        pinfo.cols.info = "Malformed KAP (too short)"
        return size
    end
    tree:add(f.magic, buf(0, 2))
    if buf(0, 2):uint() ~= 0x4B41 then tree:add_proto_expert_info(e.bad_magic) end
    local vitem = tree:add(f.version, buf(2, 1))
    if buf(2, 1):uint() ~= 1 then vitem:add_proto_expert_info(e.bad_version) end

    local ty = buf(3, 1):uint()
    local titem = tree:add(f.type, buf(3, 1))
    local flags = buf(4, 1):uint()
    local fitem = tree:add(f.flags, buf(4, 1))
    fitem:add(f.flag_auth, buf(4, 1))
    fitem:add(f.flag_reserved, buf(4, 1))
    if bit.band(flags, 0xFE) ~= 0 then fitem:add_proto_expert_info(e.bad_flags) end
    local diag = buf(5, 1):uint()
    local ditem = tree:add(f.diag, buf(5, 1))
    local litem = tree:add(f.length, buf(6, 2))
    if buf(6, 2):uint() ~= size then litem:add_proto_expert_info(e.bad_length) end
    local session = buf(8, 4):uint()
    tree:add(f.session, buf(8, 4))

    local name = types[ty]
    local info = name or string.format("Unknown type %d", ty)
    if ty ~= 1 and ty ~= 2 and ty ~= 4 then info = info .. string.format(" session=0x%08x", session) end
    if diag ~= 0 then
        local text = diags[diag] or "unknown"
        info = info .. string.format(" diag=%d (%s)", diag, text)
        ditem:add_proto_expert_info(e.diag_note, string.format("Diag %d: %s", diag, text))
    end
    if not name then
        titem:add_proto_expert_info(e.bad_type)
        pinfo.cols.info = info
        return size
    end

    local auth = bit.band(flags, FLAG_AUTH) ~= 0
    local body_end = size - (auth and TRAILER_SIZE or 0)
    local expected = body_sizes[ty]
    if ty == 1 and body_end >= HEADER_SIZE + 22 then
        expected = expected + buf(HEADER_SIZE + 21, 1):uint()
    end
    if body_end - HEADER_SIZE < expected then
        tree:add_proto_expert_info(e.bad_size)
        pinfo.cols.info = info .. " [malformed]"
        return size
    end
    local body_tree = tree:add(buf(HEADER_SIZE, expected), "Body (" .. name .. ")")
    info = dissect_body(ty, buf(HEADER_SIZE, expected), body_tree, pinfo, info)
    if HEADER_SIZE + expected < body_end then
        local extra = tree:add(f.trailing, buf(HEADER_SIZE + expected, body_end - HEADER_SIZE - expected))
        extra:add_proto_expert_info(e.bad_size)
    end
    if auth then
        local trailer = tree:add(buf(body_end, TRAILER_SIZE), "Authentication trailer")
        trailer:add(f.key_id, buf(body_end, 4))
        trailer:add(f.mac, buf(body_end + 4, 32))
        info = info .. string.format(" [auth key %d]", buf(body_end, 4):uint())
    end
    pinfo.cols.info = info
    return size
end

function kap.dissector(buf, pinfo, root)
    return dissect(buf, pinfo, root)
end

-- Finds KAP/1 on ports not registered: magic "KA", version 1, a known type and
-- a length field equal to the datagram size.
local function heuristic(buf, pinfo, root)
    if buf:len() < HEADER_SIZE then return false end
    if buf(0, 2):uint() ~= 0x4B41 or buf(2, 1):uint() ~= 1 then return false end
    if not types[buf(3, 1):uint()] or buf(6, 2):uint() ~= buf:len() then return false end
    dissect(buf, pinfo, root)
    return true
end

local udp_port = DissectorTable.get("udp.port")
udp_port:add(7371, kap)
kap:register_heuristic("udp", heuristic)

-- The Go keepalive module's text protocol:
--   registration  peer -> server:5001         "<name>:<interval s>:<probes>"
--   probe         server:5002 -> peer:5002   "keepalive:<token>"
--   reply         peer:5002 -> server:5002   "<name>:<token>" + NUL padding
local legacy = Proto("kaplegacy", "Go keepalive module (legacy text protocol)")
local lf = {
    kind = ProtoField.string("kaplegacy.kind", "Kind"),
    name = ProtoField.string("kaplegacy.name", "Name"),
    interval_s = ProtoField.uint32("kaplegacy.interval_s", "Interval (s)"),
    probes = ProtoField.uint32("kaplegacy.probes", "Probes"),
    token = ProtoField.string("kaplegacy.token", "Token"),
    padding = ProtoField.uint32("kaplegacy.padding", "NUL padding bytes"),
}
legacy.fields = lf
local le = {
    malformed = ProtoExpert.new("kaplegacy.malformed", "Not a legacy keepalive message",
        expert.group.MALFORMED, expert.severity.WARN),
}
legacy.experts = le

function legacy.dissector(buf, pinfo, root)
    local size = buf:len()
    if size == 0 then return 0 end
    pinfo.cols.protocol = "KA-legacy"
    local tree = root:add(legacy, buf(), "Go keepalive module (legacy)")
    local text = buf():raw()
    local nul = text:find("\0", 1, true)
    local printable = nul and text:sub(1, nul - 1) or text
    local name, interval, probes = printable:match("^([^:]+):(%d+):(%d+)$")
    if name then
        tree:add(lf.kind, buf(0, 0), "registration"):set_generated()
        tree:add(lf.name, buf(0, #name))
        tree:add(lf.interval_s, buf(#name + 1, #interval), tonumber(interval))
        tree:add(lf.probes, buf(#name + #interval + 2, #probes), tonumber(probes))
        pinfo.cols.info = string.format("Registration name=%s interval=%ss probes=%s", name,
            interval, probes)
        return size
    end
    local token = printable:match("^keepalive:(%d+)$")
    if token then
        tree:add(lf.kind, buf(0, 0), "probe"):set_generated()
        tree:add(lf.token, buf(10, #token))
        pinfo.cols.info = "Probe token=" .. token
        return size
    end
    name, token = printable:match("^([^:]+):(%d+)$")
    if name then
        tree:add(lf.kind, buf(0, 0), "reply"):set_generated()
        tree:add(lf.name, buf(0, #name))
        tree:add(lf.token, buf(#name + 1, #token))
        if nul then tree:add(lf.padding, buf(nul - 1, size - nul + 1), size - nul + 1) end
        pinfo.cols.info = string.format("Reply name=%s token=%s", name, token)
        return size
    end
    tree:add_proto_expert_info(le.malformed)
    pinfo.cols.info = "Malformed legacy keepalive message"
    return size
end

udp_port:add(5001, legacy)
udp_port:add(5002, legacy)
