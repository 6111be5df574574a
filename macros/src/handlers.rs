//! `#[mesh::handlers]`: typed dispatch and the wire dispatch table.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItem, ItemImpl, ReturnType, Type};

/// One handler: `fn <method>(&mut self, _: <msg>[, ctx]) [-> ret]`.
struct HandlerIr {
    method: Ident,
    msg: Type,
    is_async: bool,
    with_ctx: bool,
    /// Where a reply type mismatch is reported.
    ret_span: Span,
}

struct HandlersIr {
    reentrant: bool,
    self_ty: Type,
    self_ident: Ident,
    handlers: Vec<HandlerIr>,
}

pub(crate) fn expand(args: TokenStream, item: ItemImpl) -> syn::Result<TokenStream> {
    let reentrant = match syn::parse2::<Option<Ident>>(args.clone()) {
        Ok(None) => false,
        Ok(Some(id)) if id == "reentrant" => true,
        _ => {
            return Err(syn::Error::new_spanned(
                args,
                "#[mesh::handlers] takes no arguments, or `reentrant` \
                 (`#[mesh::handlers(reentrant)]`: calls of the actor's own chain interleave)",
            ))
        }
    };
    let ir = parse(&item, reentrant)?;
    let generated = codegen(&ir);
    Ok(quote! {
        #item
        #generated
    })
}

fn parse(item: &ItemImpl, reentrant: bool) -> syn::Result<HandlersIr> {
    if let Some((_, path, _)) = &item.trait_ {
        return Err(syn::Error::new_spanned(
            path,
            "#[mesh::handlers] goes on an inherent `impl Actor { ... }` block, not a trait impl",
        ));
    }
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &item.generics,
            "mesh actors cannot be generic: the actor type is part of the wire contract",
        ));
    }
    let self_ident = match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    }
    .ok_or_else(|| syn::Error::new_spanned(&item.self_ty, "expected the actor's type name"))?;
    let mut handlers = Vec::new();
    let mut errors: Option<syn::Error> = None;
    for it in &item.items {
        let ImplItem::Fn(f) = it else { continue };
        match parse_handler(f, reentrant) {
            Ok(h) => handlers.push(h),
            Err(e) => match &mut errors {
                Some(all) => all.combine(e),
                None => errors = Some(e),
            },
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }
    Ok(HandlersIr {
        reentrant,
        self_ty: (*item.self_ty).clone(),
        self_ident,
        handlers,
    })
}

fn parse_handler(f: &syn::ImplItemFn, reentrant: bool) -> syn::Result<HandlerIr> {
    let sig = &f.sig;
    let shape = if reentrant {
        "a handler of a reentrant actor is `async fn name(&self, msg: Message)` or \
         `async fn name(&self, msg: Message, ctx: &Ctx)`: calls of one chain interleave, \
         so they share the state (keep what they change in a `Mutex` or atomics); \
         put other methods in a separate impl block"
    } else {
        "a handler is `async fn name(&mut self, msg: Message)` or \
         `async fn name(&mut self, msg: Message, ctx: &Ctx)`; \
         put other methods in a separate impl block"
    };
    let want = if reentrant { "`&self`" } else { "`&mut self`" };
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a handler cannot be generic",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r))
            if r.reference.is_some() && r.mutability.is_some() != reentrant => {}
        Some(other) => {
            return Err(syn::Error::new_spanned(
                other,
                format!("expected {want}: {shape}"),
            ))
        }
        None => {
            return Err(syn::Error::new_spanned(
                &sig.ident,
                format!("missing {want}: {shape}"),
            ))
        }
    }
    let msg = match inputs.next() {
        Some(FnArg::Typed(t)) => (*t.ty).clone(),
        _ => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                format!("missing the message parameter: {shape}"),
            ))
        }
    };
    if is_ctx(&msg) {
        return Err(syn::Error::new_spanned(
            &msg,
            format!("the message comes first, then `ctx: &Ctx`: {shape}"),
        ));
    }
    if let Type::Reference(_) = msg {
        return Err(syn::Error::new_spanned(
            &msg,
            format!("a handler takes its message by value, not by reference: {shape}"),
        ));
    }
    let with_ctx = match inputs.next() {
        None => false,
        Some(FnArg::Typed(t)) if matches!(*t.ty, Type::Reference(_)) => true,
        Some(other) => {
            return Err(syn::Error::new_spanned(
                other,
                format!("the parameter after the message can only be `ctx: &Ctx`: {shape}"),
            ))
        }
    };
    if let Some(extra) = inputs.next() {
        return Err(syn::Error::new_spanned(
            extra,
            format!("too many parameters: {shape}"),
        ));
    }
    let ret_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };
    Ok(HandlerIr {
        method: sig.ident.clone(),
        msg,
        is_async: sig.asyncness.is_some(),
        with_ctx,
        ret_span,
    })
}

/// Whether `ty` is `&Ctx` (or `&mesh::Ctx`, or `Ctx`).
fn is_ctx(ty: &Type) -> bool {
    let ty = match ty {
        Type::Reference(r) => &*r.elem,
        other => other,
    };
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Ctx"))
}

fn codegen(ir: &HandlersIr) -> TokenStream {
    let p = quote!(::mesh::__private);
    let self_ty = &ir.self_ty;
    let env = format_ident!("__MeshEnvelope{}", ir.self_ident);
    let variants: Vec<Ident> = ir
        .handlers
        .iter()
        .map(|h| format_ident!("H{}", h.method.to_string().trim_start_matches("r#")))
        .collect();

    // The reply of handler `h`, typed as the message's declared reply so a
    // mismatch is reported on the handler's return type.
    let run = |h: &HandlerIr, msg: &Ident| {
        let method = &h.method;
        let m = &h.msg;
        let ctx = h.with_ctx.then(|| quote!(, ctx));
        let call = if h.is_async {
            quote!(self.#method(#msg #ctx).await)
        } else {
            quote!(self.#method(#msg #ctx))
        };
        // The binding is spanned on the handler's return type, so a reply
        // type mismatch is reported there.
        let returned = quote_spanned!(h.ret_span=> __mesh_returned);
        quote! {
            let __mesh_returned = #call;
            let reply: <#m as #p::Message>::Reply = #returned;
        }
    };

    let enum_variants = ir.handlers.iter().zip(&variants).map(|(h, v)| {
        let m = &h.msg;
        quote!(#v(#m, #p::ReplyTo<<#m as #p::Message>::Reply>))
    });
    let handle_arms: Vec<TokenStream> = ir
        .handlers
        .iter()
        .zip(&variants)
        .map(|(h, v)| {
            let msg = format_ident!("msg");
            let body = run(h, &msg);
            quote! {
                #env::#v(msg, reply_to) => {
                    #p::finish(reply_to, ctx, async {
                        #body
                        ::core::result::Result::Ok(reply)
                    })
                    .await
                }
            }
        })
        .collect();
    let wire_arms: Vec<TokenStream> = ir
        .handlers
        .iter()
        .map(|h| {
            let m = &h.msg;
            let msg = format_ident!("msg");
            let body = run(h, &msg);
            quote! {
                if tag == <#self_ty as #p::Handler<#m>>::TAG {
                    let msg: #m = #p::decode(body)?;
                    #body
                    return #p::encode(&reply);
                }
            }
        })
        .collect();
    let fail_arms = variants
        .iter()
        .map(|v| quote!(#env::#v(_, r) => r.send(::core::result::Result::Err(err))));
    let deadline_arms = variants
        .iter()
        .map(|v| quote!(#env::#v(_, ref r) => r.deadline()));
    let abandoned_arms = variants
        .iter()
        .map(|v| quote!(#env::#v(_, ref r) => r.abandoned()));
    let caller_arms = variants
        .iter()
        .map(|v| quote!(#env::#v(_, ref r) => r.caller()));
    let table = ir.handlers.iter().map(|h| {
        let m = &h.msg;
        quote!((<#self_ty as #p::Handler<#m>>::TAG, <#m as #p::Message>::NAME))
    });
    let handler_impls = ir.handlers.iter().zip(&variants).map(|(h, v)| {
        let m = &h.msg;
        quote_spanned! {m.span()=>
            #[automatically_derived]
            impl #p::Handler<#m> for #self_ty {
                const TAG: u64 = #p::tag(
                    <#self_ty as #p::Actor>::CAPABILITY,
                    <#self_ty as #p::Actor>::NAME,
                    <#m as #p::Message>::NAME,
                );
                #[inline]
                fn __wrap(msg: #m, reply: #p::ReplyTo<<#m as #p::Message>::Reply>) -> #env {
                    #env::#v(msg, reply)
                }
            }
        }
    });

    let reentrant = ir.reentrant.then(|| {
        quote! {
            const REENTRANT: bool = true;

            #[allow(unused_variables, unreachable_code)]
            fn __interleaver<'a>(
                &'a self,
                ctx: &'a #p::Ctx,
            ) -> ::core::option::Option<#p::Interleaver<'a, Self>> {
                ::core::option::Option::Some(#p::Interleaver {
                    local: ::std::boxed::Box::new(move |env: #env| -> #p::BoxFuture<'a, #p::Outcome> {
                        ::std::boxed::Box::pin(async move {
                            match env {
                                #(#handle_arms)*
                            }
                        })
                    }),
                    wire: ::std::boxed::Box::new(move |tag: u64, body: ::std::vec::Vec<u8>| -> #p::BoxFuture<'a, ::core::result::Result<::std::vec::Vec<u8>, #p::Error>> {
                        ::std::boxed::Box::pin(async move {
                            let body = &body[..];
                            #(#wire_arms)*
                            ::core::result::Result::Err(#p::unknown_message(<#self_ty as #p::Actor>::NAME, tag))
                        })
                    }),
                })
            }
        }
    });

    let sync_check = ir.reentrant.then(|| {
        quote_spanned! {self_ty.span()=>
            const _: fn() = || #p::assert_reentrant_sync::<#self_ty>();
        }
    });

    quote! {
        #sync_check

        #[doc(hidden)]
        #[allow(non_camel_case_types, private_interfaces, clippy::large_enum_variant)]
        pub enum #env {
            #(#enum_variants,)*
        }

        #[automatically_derived]
        #[allow(clippy::manual_async_fn, clippy::let_unit_value, clippy::unit_arg)]
        impl #p::Handlers for #self_ty {
            type Envelope = #env;

            const MESSAGES: &'static [(u64, &'static str)] = &[#(#table),*];

            #[allow(unused_variables)]
            fn __handle(
                &mut self,
                env: #env,
                ctx: &#p::Ctx,
            ) -> impl ::core::future::Future<Output = #p::Outcome> + ::core::marker::Send {
                async move {
                    match env {
                        #(#handle_arms)*
                    }
                }
            }

            #[allow(unused_variables, unreachable_code)]
            fn __handle_wire(
                &mut self,
                tag: u64,
                body: &[u8],
                ctx: &#p::Ctx,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<::std::vec::Vec<u8>, #p::Error>,
            > + ::core::marker::Send {
                async move {
                    #(#wire_arms)*
                    ::core::result::Result::Err(#p::unknown_message(<#self_ty as #p::Actor>::NAME, tag))
                }
            }

            #[allow(unused_variables)]
            fn __fail(env: #env, err: #p::Error) {
                match env {
                    #(#fail_arms,)*
                }
            }

            #[allow(unused_variables)]
            fn __deadline(env: &#env) -> ::core::option::Option<#p::Instant> {
                match *env {
                    #(#deadline_arms,)*
                }
            }

            #[allow(unused_variables)]
            fn __abandoned(env: &#env) -> bool {
                match *env {
                    #(#abandoned_arms,)*
                }
            }

            #[allow(unused_variables)]
            fn __caller(env: &#env) -> #p::Caller {
                match *env {
                    #(#caller_arms,)*
                }
            }

            #reentrant
        }

        #(#handler_impls)*
    }
}
