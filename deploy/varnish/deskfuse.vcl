# deskfuse site cache: Varnish (Debian's varnish 7.1) in front of one deskfuse server or a pool of
# them (issue 12; README "Site cache (Varnish)"). The origin's contract (server/conditional.ts):
# content-addressed answers are `public, max-age=31536000, immutable` with a strong etag and answer
# 304 to If-None-Match only after the token passed; everything else is `no-store`.
#
# What this cache guarantees
#   - No private bytes without the origin's yes: every request for a token-protected immutable URL
#     (chunks, layers, indexes, deltas) is first checked at the origin with the client's own
#     Authorization (If-None-Match: * → 304, no body). Only after a 304/200 is the request
#     restarted into the cache lookup; a 401/403/404/503 goes back to the client as the origin said
#     it, and such a request never reaches the cache, so neither a hit nor the waiting list (request
#     coalescing) can hand it a body. Everyone on a waiting list passed its own check.
#   - Origin bytes ≈ once per site: the first authorised miss fetches the body (with its own token);
#     every later request costs the origin one header-only check.
#   - No purge: the URLs are content-addressed (a version's layer, index and delta never change; the
#     boot stage is named by its hash), so a cached body is never wrong.
#   - Everything else (POST, refs, versions lists, sessions, tokens, leases, /boot/ipxe, events) is
#     passed, never stored.
# The backend is in deskfuse-backend.vcl (static in VCL): see deskfuse-backend.vcl.example.
vcl 4.1;

include "deskfuse-backend.vcl";

sub vcl_recv {
  # Our own markers: never taken from a client.
  if (req.restarts == 0) {
    unset req.http.X-Df-Check;
    unset req.http.X-Df-Ok;
    unset req.http.X-Df-Inm;
    unset req.http.X-Df-Ticket;
  }
  if (req.method != "GET" && req.method != "HEAD") {
    return (pass);
  }
  # The boot stage under its content hash: public (iPXE sends no token), one object whatever
  # ?mac= says (vcl_hash); a miss still carries it to the origin, which records that fetch.
  if (req.url ~ "^/boot/stage/[0-9a-f]{32}/(vmlinuz|initrd\.img)(\?|$)") {
    unset req.http.Authorization;
    unset req.http.Cookie;
    return (hash);
  }
  if (req.url ~ "^/chunks/[0-9a-f]{64}$" || req.url ~ "^/api/v1/images/[A-Za-z0-9._-]+/versions/[1-9][0-9]*/(layer|index|delta)$") {
    if (req.restarts > 0 && req.http.X-Df-Ok == req.url) {
      # The origin said yes to this token for this very URL: the cache may answer.
      unset req.http.If-None-Match;
      if (req.http.X-Df-Inm) {
        set req.http.If-None-Match = req.http.X-Df-Inm;
      }
      if (req.http.X-Df-Ticket) {
        set req.http.x-deskfuse-ticket = req.http.X-Df-Ticket; # a miss's fetch uses the same admission pass
      }
      return (hash);
    }
    # First ask the origin, with the client's own token, whether it may read this (no body moves).
    set req.http.X-Df-Check = req.url;
    if (req.http.If-None-Match) {
      set req.http.X-Df-Inm = req.http.If-None-Match;
    }
    set req.http.If-None-Match = "*";
    return (pass);
  }
  return (pass);
}

sub vcl_hash {
  # One origin: the URL alone (not Host) names an object; the boot stage without its query.
  if (req.url ~ "^/boot/stage/") {
    hash_data(regsub(req.url, "\?.*$", ""));
  } else {
    hash_data(req.url);
  }
  return (lookup);
}

sub vcl_backend_fetch {
  unset bereq.http.X-Df-Check;
  unset bereq.http.X-Df-Ok;
  unset bereq.http.X-Df-Inm;
  unset bereq.http.X-Df-Ticket;
  return (fetch);
}

sub vcl_backend_response {
  if (bereq.uncacheable) {
    return (deliver); # a pass: delivered to its client alone
  }
  if (beresp.status == 200 && beresp.http.Cache-Control ~ "(^|[ ,])immutable([ ,]|$)" && beresp.http.ETag) {
    unset beresp.http.x-deskfuse-ticket; # one client's admission pass: never stored
    unset beresp.http.Set-Cookie;
    set beresp.ttl = 365d;
    set beresp.grace = 0s;
    return (deliver);
  }
  # Anything else on a cacheable URL (a token revoked since its check, 404, 503 busy): this client's
  # answer only, and no hit-for-miss marker (ttl 0) so the next client is fetched and checked anew.
  set beresp.uncacheable = true;
  set beresp.ttl = 0s;
  return (deliver);
}

sub vcl_deliver {
  if (req.http.X-Df-Check) {
    if (resp.status == 304 || resp.status == 200) {
      set req.http.X-Df-Ok = req.http.X-Df-Check;
      unset req.http.X-Df-Check;
      if (resp.http.x-deskfuse-ticket) {
        set req.http.X-Df-Ticket = resp.http.x-deskfuse-ticket;
      }
      return (restart);
    }
    # 401, 403, 404, 503 …: the origin's own answer, and nothing from the cache.
    set resp.http.X-Df-Cache = "refused";
    return (deliver);
  }
  if (req.http.X-Df-Ticket) {
    set resp.http.x-deskfuse-ticket = req.http.X-Df-Ticket; # this client's own pass, from its check
  }
  if (req.http.X-Df-Ok || req.url ~ "^/boot/stage/") {
    if (obj.hits > 0) {
      set resp.http.X-Df-Cache = "hit";
    } else {
      set resp.http.X-Df-Cache = "miss";
    }
  }
  return (deliver);
}
