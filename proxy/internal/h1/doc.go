// Package h1 is the proxy's HTTP/1.x engine: the server of client
// connections (Server, Conn, with its response writer) and the upstream
// client (Pool). It knows nothing of the proxy's policy, records or
// connection state. The proxy hands the server a Handler (as
// net/http.Server takes one) and, per connection, ConnHooks through which
// the engine reports what the proxy records and counts: a request refused
// before the handler, a client that stopped making progress. The upstream
// side takes a request, its limits and a dial function bound to the
// original destination (as httputil.ReverseProxy takes a Transport).
//
// Both sides exist because net/http's generic ones cost the proxy CPU per
// request that a proxy does not need to spend: see Server and Pool.
package h1
